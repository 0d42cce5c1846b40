"""Resumable, checksummed downloads into a cache folder that outlives the run.

A download goes to ``<cache>/<name>.part`` as it arrives, so one interrupted
halfway survives and the next run continues it with an HTTP ``Range`` request
instead of starting a ~1 GB transfer again.  pooch checks the md5 and moves the
finished file to its final name; a file already cached with that md5 is reused.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from nriqa.core.errors import NriqaError


class ResumableDownloader:
    """A pooch downloader that can continue where an interrupted run stopped.

    Bytes go to ``<cache>/<name>.part`` as they arrive.  If that file exists,
    the request asks only for the rest (``Range: bytes=<size>-``) and appends.
    Once complete, the part file is handed to pooch, which checks the hash and
    moves it to its final name.  Any failure leaves the ``.part`` in place,
    less at most the one chunk that was being read when the connection broke.
    """

    def __init__(self, part: Path, *, progressbar: bool = True, timeout: float = 60.0,
                 chunk_size: int = 1 << 16):
        self.part = Path(part)
        self.progressbar = progressbar
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.md5: str | None = None  # of the completed download, for error messages

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        import pooch as pooch_lib
        import requests
        from tqdm import tqdm

        if check_only:  # pooch's "is it available?" probe
            with requests.head(url, allow_redirects=True, timeout=self.timeout) as response:
                return response.ok

        offset = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if offset and response.status_code == 416:
                # Nothing left to send: the part may already be whole.
                total = _content_range_total(response)
                if total != offset:
                    self.part.unlink()
                    raise requests.exceptions.HTTPError(
                        f"{url} refused to resume {self.part.name} at byte {offset}; "
                        f"the partial file was discarded", response=response)
            else:
                response.raise_for_status()
                if offset and (response.status_code != 206 or _content_range_start(response) != offset):
                    # The server ignored the Range header: start over.
                    offset = 0
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                mode = "ab" if offset else "wb"
                with open(self.part, mode) as f, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=self.part.name.removesuffix(".part"), disable=not self.progressbar,
                ) as bar:
                    for chunk in response.iter_content(self.chunk_size):
                        f.write(chunk)
                        bar.update(len(chunk))
                size = self.part.stat().st_size
                if total is not None and size != total:
                    raise requests.exceptions.ConnectionError(
                        f"connection closed after {size} of {total} bytes")
        self.md5 = pooch_lib.file_hash(str(self.part), alg="md5")
        os.replace(self.part, output_file)


def _content_range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _content_range_total(response) -> int | None:
    match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def cache_name(url: str) -> str:
    """The download's file name in the cache: its own name plus a hash of the whole URL, so two
    URLs that end alike (KonIQ's two archives from one mirror folder) never overwrite each other."""
    path = PurePosixPath(urlsplit(url).path)
    stem, suffix = (path.stem, path.suffix) if path.name else ("download", "")
    return f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}{suffix}"


def download(url: str, md5: str, cache_dir: Path, *, progressbar: bool = True) -> Path:
    """Download ``url`` into ``cache_dir`` (or reuse it there) and verify its md5.

    A file already cached with the right checksum is not downloaded again.
    """
    import pooch
    import requests

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = cache_name(url)
    legacy = cache_dir / (PurePosixPath(urlsplit(url).path).name or "download")
    if legacy.is_file() and not (cache_dir / name).exists():
        legacy.rename(cache_dir / name)  # cached under its bare name by earlier versions; md5 still checked
    part = cache_dir / (name + ".part")
    downloader = ResumableDownloader(part, progressbar=progressbar)
    try:
        path = pooch.retrieve(url, known_hash=f"md5:{md5}", fname=name, path=cache_dir,
                              downloader=downloader, progressbar=progressbar)
    except requests.exceptions.RequestException as exc:
        kept = part.stat().st_size if part.exists() else 0
        resume = f"; {kept} bytes kept in {part}, run again to resume" if kept else ""
        raise NriqaError(f"download of {url} failed: {exc}{resume}") from exc
    except ValueError as exc:
        # pooch says "hash ... does not match"; by then it has deleted the file.
        if "hash" not in str(exc).lower():
            raise
        raise NriqaError(
            f"checksum mismatch for {url}: expected md5 {md5}, got {downloader.md5}; "
            f"the downloaded file was deleted"
        ) from exc
    return Path(path)
