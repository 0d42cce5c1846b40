"""Safe extraction of zip and RAR archives, which are treated as untrusted input.

Every member is checked before a single byte is written: absolute paths, ``..``
components, drive letters, links and device files are refused, naming the
member, and so are a member that would have to be both a file and a folder (``a``
a file and ``a/b`` inside it) and an archive whose listing exceeds :data:`LIMITS`
(members, total size, or unpacked/packed ratio).  Because an extractor may still disagree
with the listing (bsdtar applies Unix modes from MAC_OS and BEOS entries too),
the extracted tree is walked afterwards and any link, hard link or special file
is refused; bsdtar runs with a timeout and is stopped once what it wrote exceeds
the size limit.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
import zipfile
import zlib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from nriqa.core.errors import NriqaError

# Members an archive may list: the real datasets hold about 3,000 (TID2013) to 10,000
# (KADID-10k, KonIQ-10k) files, a hundred times fewer.
MAX_MEMBERS = 1_000_000


@dataclass(frozen=True)
class ExtractLimits:
    """What an archive may unpack to. The real datasets unpack to 2-3 GB at ratios below 3
    (images barely compress); a decompression bomb reaches ratios in the thousands."""

    max_bytes: int = 32 * 2**30
    max_ratio: float = 100.0
    timeout_s: float = 3600.0
    max_members: int = MAX_MEMBERS


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


def check_member_count(archive: Path, members: int, limits: ExtractLimits) -> None:
    """Refuse an archive listing more members than the limit, before they are checked."""
    if members > limits.max_members:
        raise NriqaError(f"{archive}: {members} members, over the limit of {limits.max_members}; "
                         "refusing to extract")


def check_member_tree(archive: Path, members: list[tuple[str, bool]]) -> None:
    """Refuse a listing in which one path is both a file and a folder: member "a" a file and
    "a/b" inside it, or "a/" a folder too. Extraction would stop halfway at it with an OS
    error. `members` holds (name, is a folder); names are read as the extractors read them,
    "/"-separated, empty and "." parts left out."""
    files: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    for name, is_dir in members:
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        for depth in range(1, len(parts)):
            folders.setdefault(parts[:depth], name)
        if parts:
            (folders if is_dir else files).setdefault(parts, name)
    clashes = sorted(files.keys() & folders.keys())
    if clashes:
        path = clashes[0]
        raise NriqaError(f"{archive}: member {files[path]!r} is a file, but member "
                         f"{folders[path]!r} needs a folder there; refusing to extract")


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
        check_member_count(archive, len(zf.infolist()), limits)
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
        check_member_tree(archive, [(info.filename, info.is_dir()) for info in zf.infolist()])
        # zipfile writes no more than each member declares, so the listing bounds the output.
        check_declared_size(archive, sum(info.file_size for info in zf.infolist()), limits)
        try:
            zf.extractall(dest)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise NriqaError(f"{archive} is truncated or corrupt: {exc}") from exc
        except OSError as exc:  # what the listing does not show: a name too long, a full disk
            raise NriqaError(f"{archive}: cannot extract it into {dest}: {exc}") from exc


def _extract_rar(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    import rarfile

    try:
        # "strict": a damaged header is an error, not the silent end of the listing.
        rf = rarfile.RarFile(archive, errors="strict")
    except (rarfile.Error, OSError) as exc:
        raise NriqaError(f"{archive} is not a readable RAR archive (truncated or corrupt?): {exc}") from exc
    with rf:
        check_member_count(archive, len(rf.infolist()), limits)
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
        check_member_tree(archive, [(info.filename, info.is_dir()) for info in rf.infolist()])
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
        except OSError as exc:  # what the listing does not show: a name too long, a full disk
            raise NriqaError(f"{archive}: cannot extract it into {dest}: {exc}") from exc
