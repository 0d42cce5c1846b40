"""Fetch a dataset into ``data/raw``: download, verify, extract, publish atomically.

The ``data`` section of params.yaml names a source:

``synthetic``
    a small TID2013-like set generated from a seed (:mod:`nriqa.data.synthetic`);
``tid2013`` / ``kadid10k`` / ``koniq10k``
    the official archives, downloaded with pooch into ``data.cache_dir``
    (``data/downloads`` by default).  That folder is deliberately outside
    DVC's outputs, so a download interrupted halfway survives as a ``.part``
    file and the next run continues it with an HTTP ``Range`` request instead
    of starting the ~1 GB transfer again;
``local``
    an already extracted copy of one of those datasets (``data.path``, laid
    out as ``data.format``), copied in.

Whatever the source, ``out_dir`` ends up holding the dataset root itself (for
TID2013 the folder with ``mos_with_names.txt``), and it appears only when
everything succeeded: the work happens in a sibling ``.tmp-<name>`` folder that
is renamed into place at the end and removed on any failure.

Archives are treated as untrusted input.  Every member is checked before a
single byte is written: absolute paths, ``..`` components, drive letters,
links and device files are refused, naming the member, and so is an archive
whose declared contents exceed :data:`LIMITS` (total size, or unpacked/packed
ratio).  Because an extractor may still disagree with the listing (bsdtar applies
Unix modes from MAC_OS and BEOS entries too), the extracted tree is walked
afterwards and any link, hard link or special file is refused; bsdtar runs with a
timeout and is stopped once what it wrote exceeds the size limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import time
import zipfile
import zlib
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlsplit

from nriqa.errors import NriqaError

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "tid2013", "kadid10k", "koniq10k", "local")
FORMATS = ("tid2013", "kadid10k", "koniq10k")
DEFAULT_CACHE_DIR = "data/downloads"

_MMSP = "https://datasets.vqa.mmsp-kn.de/archives/"


@dataclass(frozen=True)
class Archive:
    """One file to download: where from, and its checksum when one is known."""

    url: str
    md5: str | None = None


# The official downloads, by dataset and by the role each archive plays.
# Only TID2013 publishes a checksum we know; the others must be given one in
# params.yaml so that what gets trained on is pinned down.
OFFICIAL = {
    "tid2013": {
        "archive": Archive(
            "http://www.ponomarenko.info/tid2013/tid2013.rar",
            "2c42bec2407adc49cf4d7858daf8f99b",
        )
    },
    "kadid10k": {"archive": Archive(_MMSP + "kadid10k.zip")},
    "koniq10k": {
        "images": Archive(_MMSP + "koniq10k_1024x768.zip"),
        "scores": Archive(_MMSP + "koniq10k_scores_and_distributions.zip"),
    },
}

# How each dataset's root folder is recognised inside its archive.
ROOT_MARKERS = {"tid2013": "mos_with_names.txt", "kadid10k": "dmos.csv"}
KONIQ_SCORES = "koniq10k_scores_and_distributions.csv"
KONIQ_IMAGES = "1024x768"

_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def fetch_dataset(data_params: dict, out_dir: Path) -> None:
    """Materialise the dataset described by ``data_params`` at ``out_dir``.

    ``out_dir`` is replaced as a whole: on success it holds the dataset root;
    on failure it does not exist and no temporary folder is left behind.
    Downloads stay in ``data_params["cache_dir"]`` for the next run.
    """
    source = data_params.get("source")
    if source not in SOURCES:
        raise NriqaError(f"data.source is {source!r}; expected one of: {', '.join(SOURCES)}")
    out_dir = Path(out_dir)
    with staging(out_dir) as tmp:
        if source == "synthetic":
            root = _build_synthetic(data_params, tmp)
        elif source == "local":
            root = _copy_local(data_params, tmp)
        else:
            root = _download_and_extract(source, data_params, tmp)
        # The rename is the commit point: the folder appears complete or not at all.
        os.rename(root, out_dir)
    log.info("dataset ready in %s", out_dir)


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A fresh ``.tmp-<name>`` sibling of ``out_dir``, always removed afterwards.

    Any previous ``out_dir`` is removed first: if this run fails, a dataset left
    over from other parameters must not pass for the one that was asked for.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / (".tmp-" + out_dir.name)
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier run
    if out_dir.is_symlink() or out_dir.is_file():
        out_dir.unlink()
    elif out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# synthetic and local
# --------------------------------------------------------------------------


def _build_synthetic(data_params: dict, tmp: Path) -> Path:
    # Imported here so that fetching a real dataset does not depend on the
    # generator (and its imaging stack) being importable.
    from nriqa.data.synthetic import generate_tid2013_like

    options = dict(
        num_references=int(data_params["num_references"]),
        image_size=tuple(data_params["image_size"]),
        levels=data_params["levels"],
        seed=int(data_params["seed"]),
        progress=True,
    )
    # "all" is params.yaml's word for the generator's default: every type it knows.
    types = data_params["distortion_types"]
    if types != "all":
        options["distortion_types"] = types
    root = tmp / "dataset"
    root.mkdir()  # the generator writes into an existing, empty folder
    generate_tid2013_like(root, **options)
    return root


def _copy_local(data_params: dict, tmp: Path) -> Path:
    if data_params.get("format") not in FORMATS:
        raise NriqaError(
            f"data.format is {data_params.get('format')!r}; with source: local it must say how "
            f"data.path is laid out: one of {', '.join(FORMATS)}"
        )
    raw = data_params.get("path")
    if not raw:
        raise NriqaError("data.path is empty; source: local needs the folder of an extracted dataset")
    path = Path(raw).expanduser()
    if not path.exists():
        raise NriqaError(f"data.path {path} does not exist")
    if not path.is_dir():
        raise NriqaError(f"data.path {path} is not a folder")
    if not any(path.iterdir()):
        raise NriqaError(f"data.path {path} is an empty folder")
    root = tmp / "dataset"
    shutil.copytree(path, root)
    return root


# --------------------------------------------------------------------------
# Official datasets
# --------------------------------------------------------------------------


def _download_and_extract(source: str, data_params: dict, tmp: Path) -> Path:
    archives = resolve_archives(source, data_params)
    cache_dir = Path(data_params.get("cache_dir") or DEFAULT_CACHE_DIR)
    files = {role: download(a.url, a.md5, cache_dir) for role, a in archives.items()}

    extracted = tmp / "extract"
    for role, archive in files.items():
        extract_archive(archive, extracted / role)

    if source == "koniq10k":
        # Two archives, each with its own folder structure: gather the score
        # table and the image folder into one root.
        root = tmp / "dataset"
        root.mkdir()
        scores = _find_unique(extracted / "scores", KONIQ_SCORES, want_dir=False, archive=files["scores"])
        images = _find_unique(extracted / "images", KONIQ_IMAGES, want_dir=True, archive=files["images"])
        os.rename(scores, root / KONIQ_SCORES)
        os.rename(images, root / KONIQ_IMAGES)
        return root
    marker = _find_unique(extracted / "archive", ROOT_MARKERS[source], want_dir=False, archive=files["archive"])
    return marker.parent


def resolve_archives(source: str, data_params: dict) -> dict[str, Archive]:
    """The archives to fetch for ``source``, with params.yaml's overrides applied.

    For single-archive datasets ``url`` and ``md5`` are strings.  KonIQ-10k has
    two archives, so there they are mappings by role: ``{images: ..., scores: ...}``.
    """
    official = OFFICIAL[source]
    urls = _by_role(source, "url", data_params.get("url"), official)
    md5s = _by_role(source, "md5", data_params.get("md5"), official)
    archives = {}
    for role, default in official.items():
        md5 = md5s.get(role) or default.md5
        field = "data.md5" if len(official) == 1 else f"data.md5.{role}"
        if not md5:
            raise NriqaError(
                f"{field} is required for {source}: no official checksum is published for "
                f"{default.url}. Download it once, check it, and put its md5 in params.yaml "
                f"(`md5sum <file>`)."
            )
        if not _MD5.match(str(md5)):
            raise NriqaError(f"{field} is {md5!r}; expected 32 hexadecimal digits")
        archives[role] = Archive(urls.get(role) or default.url, str(md5).lower())
    return archives


def _by_role(source: str, field: str, value, official: dict) -> dict:
    if value is None:
        return {}
    roles = list(official)
    if len(roles) == 1:
        if not isinstance(value, str):
            raise NriqaError(f"data.{field} for {source} must be a single string, got {value!r}")
        return {roles[0]: value}
    if not isinstance(value, dict) or not set(value) <= set(roles):
        shape = ", ".join(f"{r}: <{field}>" for r in roles)
        raise NriqaError(f"data.{field} for {source} must be a mapping {{{shape}}}, got {value!r}")
    return dict(value)


def _find_unique(base: Path, name: str, *, want_dir: bool, archive: Path) -> Path:
    """The one file or folder called ``name`` (any case) under ``base``."""
    hits = []
    for folder, dirs, files in os.walk(base):
        # macOS zips carry resource-fork shadows of every entry; they are not data.
        dirs[:] = [d for d in dirs if d != "__MACOSX"]
        for entry in dirs if want_dir else files:
            if entry.lower() == name.lower():
                hits.append(Path(folder) / entry)
    if not hits:
        kind = "folder" if want_dir else "file"
        raise NriqaError(f"{archive} contains no {kind} named {name}: is it the right archive?")
    if len(hits) > 1:
        listed = ", ".join(str(h.relative_to(base)) for h in hits[:10])
        raise NriqaError(f"{archive} contains {len(hits)} entries named {name} ({listed}); expected one")
    return hits[0]


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractLimits:
    """What an archive may unpack to. The real datasets unpack to 2-3 GB at ratios below 3
    (images barely compress); a decompression bomb reaches ratios in the thousands."""

    max_bytes: int = 32 * 2**30
    max_ratio: float = 100.0
    timeout_s: float = 3600.0


LIMITS = ExtractLimits()


def extract_archive(archive: Path, dest: Path, limits: ExtractLimits = LIMITS) -> None:
    """Extract a zip or RAR ``archive`` into ``dest`` after checking every member, then check
    what was written.

    Nothing is written if any member is unsafe.  If extraction fails midway, or the tree it
    wrote holds a link or special file or is too large, ``dest`` is removed, so there is never
    a partial or unsafe tree to mistake for data.
    """
    archive = Path(archive)
    kind = _archive_kind(archive)
    try:
        if kind == "zip":
            _extract_zip(archive, dest, limits)
        else:
            _extract_rar(archive, dest, limits)
        check_extracted_tree(dest, archive, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _archive_kind(archive: Path) -> str:
    # Trust the suffix first, so that a truncated zip (which zipfile no longer
    # recognises) is reported as a broken zip rather than an unknown format.
    suffix = archive.suffix.lower()
    if suffix in (".zip", ".rar"):
        return suffix[1:]
    import rarfile

    if zipfile.is_zipfile(archive):
        return "zip"
    if rarfile.is_rarfile(archive):
        return "rar"
    raise NriqaError(f"{archive} is neither a zip nor a RAR archive")


def check_declared_size(archive: Path, unpacked: int, limits: ExtractLimits) -> None:
    """Refuse an archive whose listing promises too much, before anything is written."""
    packed = max(archive.stat().st_size, 1)
    if unpacked > limits.max_bytes:
        raise NriqaError(f"{archive}: unpacks to {unpacked} bytes, over the limit of "
                         f"{limits.max_bytes}; refusing to extract")
    if unpacked / packed > limits.max_ratio:
        raise NriqaError(f"{archive}: unpacks to {unpacked / packed:.0f}x its size (limit "
                         f"{limits.max_ratio:.0f}x), a decompression bomb?; refusing to extract")


def check_extracted_tree(dest: Path, archive: Path, limits: ExtractLimits) -> None:
    """Walk what extraction wrote: only folders and plain files with one link each, within
    the size limit. The extractor's reading of the archive is what counts, not the listing."""
    total = 0
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            member = path.relative_to(dest)
            if stat.S_ISLNK(info.st_mode):
                raise NriqaError(f"{archive}: extracting it created a link, {member}; refusing it")
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                raise NriqaError(f"{archive}: extracting it created a hard link, {member}; "
                                 "refusing it")
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise NriqaError(f"{archive}: extracting it created {member}, which is not a "
                                 "regular file or folder; refusing it")
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    if total > limits.max_bytes:
        raise NriqaError(f"{archive}: unpacked to {total} bytes, over the limit of "
                         f"{limits.max_bytes}; refusing it")


def _tree_size(dest: Path) -> int:
    total = 0
    for folder, _, files in os.walk(dest):
        for name in files:
            with suppress(OSError):  # renamed or removed by bsdtar meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def run_bsdtar(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    """One bsdtar pass, stopped when it runs past the timeout or writes past the size limit."""
    started = time.monotonic()
    with subprocess.Popen(["bsdtar", "-x", "-f", str(archive), "-C", str(dest)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as tar:
        while True:
            try:
                _, errors = tar.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - started > limits.timeout_s:
                    problem = f"took over {limits.timeout_s:.0f} s"
                elif _tree_size(dest) > limits.max_bytes:
                    problem = f"wrote over {limits.max_bytes} bytes"
                else:
                    continue
                tar.kill()
                tar.communicate()
                raise NriqaError(f"{archive}: extraction stopped, bsdtar {problem}")
    if tar.returncode != 0:
        raise NriqaError(f"{archive} is truncated or corrupt: bsdtar says {errors.strip()}")


def check_member_name(name: str, archive: Path) -> None:
    """Refuse a member name that could land outside the extraction folder."""
    # Archives made on Windows may use backslashes; treat them as separators
    # so that "..\\x" cannot slip through.
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        raise NriqaError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if re.match(r"^[A-Za-z]:", posix):
        raise NriqaError(f"{archive}: member {name!r} has a drive letter; refusing to extract")
    if ".." in posix.split("/"):
        raise NriqaError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    if "\x00" in posix:
        raise NriqaError(f"{archive}: member {name!r} contains a NUL byte; refusing to extract")


def _extract_zip(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise NriqaError(f"{archive} is not a readable zip archive (truncated or corrupt?): {exc}") from exc
    with zf:
        for info in zf.infolist():
            check_member_name(info.filename, archive)
            # Unix permission bits live in the high half of external_attr;
            # zero means "no Unix type recorded", i.e. an ordinary entry.
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise NriqaError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise NriqaError(f"{archive}: member {info.filename!r} is not a regular file or folder; "
                                 f"refusing to extract")
            if info.flag_bits & 0x1:
                raise NriqaError(f"{archive}: member {info.filename!r} is encrypted")
        # zipfile writes no more than each member declares, so the listing bounds the output.
        check_declared_size(archive, sum(info.file_size for info in zf.infolist()), limits)
        try:
            zf.extractall(dest)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise NriqaError(f"{archive} is truncated or corrupt: {exc}") from exc


def _extract_rar(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    import rarfile

    try:
        # "strict": a damaged header is an error, not the silent end of the listing.
        rf = rarfile.RarFile(archive, errors="strict")
    except (rarfile.Error, OSError) as exc:
        raise NriqaError(f"{archive} is not a readable RAR archive (truncated or corrupt?): {exc}") from exc
    with rf:
        for info in rf.infolist():
            check_member_name(info.filename, archive)
            # file_redir covers RAR5 hard links, file copies, junctions and symlinks.
            if info.is_symlink() or info.file_redir:
                raise NriqaError(f"{archive}: member {info.filename!r} is a link; refusing to extract")
            # bsdtar reads a Unix mode (a symlink, a FIFO) from MAC_OS and BEOS entries too.
            unix_kind = stat.S_IFMT(info.mode or 0) if info.host_os in (
                rarfile.RAR_OS_UNIX, rarfile.RAR_OS_MACOS, rarfile.RAR_OS_BEOS) else 0
            if not (info.is_file() or info.is_dir()) or unix_kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise NriqaError(f"{archive}: member {info.filename!r} is not a regular file or folder; "
                                 f"refusing to extract")
            if info.needs_password():
                raise NriqaError(f"{archive}: member {info.filename!r} is encrypted")
        check_declared_size(archive, sum(info.file_size or 0 for info in rf.infolist()), limits)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            if rf.is_solid() and shutil.which("bsdtar"):
                # rarfile extracts member by member, and in a solid archive each
                # member can only be decoded by decompressing all before it.
                # One bsdtar pass keeps that linear; the members were checked above.
                run_bsdtar(archive, dest, limits)
            else:
                rf.extractall(dest)
        except rarfile.RarCannotExec as exc:
            raise NriqaError(
                f"cannot extract {archive}: no RAR tool found (bsdtar, unar or unrar). "
                f"Install one, e.g. `apt-get install libarchive-tools` for bsdtar"
            ) from exc
        except (rarfile.Error, EOFError) as exc:
            raise NriqaError(f"{archive} is truncated or corrupt: {exc}") from exc
