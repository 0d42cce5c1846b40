"""Fetching datasets: downloads against a local HTTP server, archive safety, atomic output.

Nothing here touches the internet: a small threaded server on 127.0.0.1
serves in-memory files, honours ``Range`` requests (which the standard
library's ``SimpleHTTPRequestHandler`` does not) and can cut a response short
to simulate a dropped connection.

There is no RAR encoder on Debian, so RAR fixtures are written by
:func:`rar4`, a minimal writer of the documented RAR 1.5-4.x format restricted
to *stored* (uncompressed) entries.  The archives it makes are real: bsdtar
lists and extracts them, and rarfile parses them.  What it cannot make is a
compressed entry, so the path where rarfile shells out to an external tool is
exercised only through the solid-archive route (bsdtar) and a simulated
missing tool.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import threading
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nriqa.core.errors import NriqaError
from nriqa.data.archives import extract_archive
from nriqa.data.downloads import cache_name, download
from nriqa.data.sources import fetch_dataset
from tests.helpers import data_config

# --------------------------------------------------------------------------
# A local HTTP server with Range support and simulated interruptions
# --------------------------------------------------------------------------


class FileServer:
    """Serves ``files`` (URL path -> bytes); records each request's Range header."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before dropping the connection
        self.honour_range = True  # False: behave like a server without Range support
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                spec = self.headers.get("Range")
                if server.honour_range and spec and spec.startswith("bytes=") and spec.endswith("-"):
                    start = int(spec[len("bytes="):-1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                payload = body[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                cut = server.cut_after.get(self.path)
                if cut is not None:
                    # Promise the whole body, send part of it, hang up.
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# --------------------------------------------------------------------------
# Archive fixtures
# --------------------------------------------------------------------------


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def kadid_zip() -> bytes:
    """The shape of the official kadid10k.zip: kadid10k/dmos.csv and kadid10k/images/."""
    return make_zip({
        "kadid10k/dmos.csv": b"dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.5,0.25\n",
        "kadid10k/images/I01_01_01.png": b"not really a png, but fetching does not care",
        "kadid10k/images/I01.png": b"reference",
    })


def _rar_block(head_type: int, flags: int, body: bytes) -> bytes:
    raw = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(raw) & 0xFFFF) + raw


def rar4(entries: list[tuple], solid: bool = False) -> bytes:
    """A RAR 4 archive of stored entries ``(name, data, unix mode[, host OS])``; the host OS is
    3 (Unix) unless given (4 is MAC_OS, 5 BEOS).

    Marker block, main header, one file header (+ data) per entry, end block;
    each header carries the low 16 bits of its CRC32 as the format requires.
    """
    out = b"Rar!\x1a\x07\x00" + _rar_block(0x73, 0x0008 if solid else 0, b"\x00" * 6)
    for name, data, mode, *host in entries:
        encoded = name.encode()
        flags = 0x8000 | (0x00E0 if stat.S_ISDIR(mode) else 0)  # long block; 0xE0 = directory
        body = struct.pack(
            "<IIBIIBBHI",
            len(data), len(data),  # packed and unpacked size (stored)
            host[0] if host else 3,  # host OS: Unix (3), so the mode is a Unix mode
            zlib.crc32(data),
            0x42210000,  # DOS timestamp, 2013-01-01
            20, 0x30,  # version needed, method "store"
            len(encoded), mode,
        ) + encoded
        out += _rar_block(0x74, flags, body) + data
    return out + _rar_block(0x7B, 0x4000, b"")


REG, DIR, LNK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777


def tid_rar(solid: bool = False) -> bytes:
    """TID2013's shape, one folder down, as the dataset root may sit anywhere."""
    return rar4([
        ("tid2013", b"", DIR),
        ("tid2013/mos_with_names.txt", b"5.1 i01_01_1.bmp\n", REG),
        ("tid2013/mos_std.txt", b"0.8\n", REG),
        ("tid2013/distorted_images", b"", DIR),
        ("tid2013/distorted_images/i01_01_1.bmp", b"BM fake", REG),
        ("tid2013/reference_images", b"", DIR),
        ("tid2013/reference_images/I01.BMP", b"BM ref", REG),
    ], solid=solid)


def assert_clean(out_dir: Path):
    """A failed fetch leaves neither the output nor its staging folder."""
    assert not out_dir.exists()
    assert not (out_dir.parent / (".tmp-" + out_dir.name)).exists()


# --------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------


def test_download_checks_md5_extracts_and_reuses_the_cache(server, tmp_path):
    data = kadid_zip()
    server.files["/kadid10k.zip"] = data
    params = {"source": "kadid10k", "url": server.url("/kadid10k.zip"), "md5": md5(data),
              "cache_dir": str(tmp_path / "downloads")}
    out = tmp_path / "data" / "raw"

    fetch_dataset(data_config(**params), out)

    assert (out / "dmos.csv").read_text().startswith("dist_img,ref_img,dmos,var")
    assert (out / "images" / "I01_01_01.png").exists()
    assert (tmp_path / "downloads" / cache_name(params["url"])).read_bytes() == data
    assert not (tmp_path / "data" / ".tmp-raw").exists()

    # A second run finds the verified file in the cache and replaces the output.
    (out / "stray").write_text("from an older run")
    fetch_dataset(data_config(**params), out)
    assert len(server.requests) == 1
    assert not (out / "stray").exists()


def test_checksum_mismatch_deletes_the_download_and_names_both_hashes(server, tmp_path):
    data = kadid_zip()
    server.files["/kadid10k.zip"] = data
    url = server.url("/kadid10k.zip")
    wrong = "0" * 32
    out = tmp_path / "raw"
    params = {"source": "kadid10k", "url": url, "md5": wrong, "cache_dir": str(tmp_path / "dl")}

    with pytest.raises(NriqaError) as err:
        fetch_dataset(data_config(**params), out)

    message = str(err.value)
    assert url in message and wrong in message and md5(data) in message
    assert_clean(out)
    assert list((tmp_path / "dl").iterdir()) == []  # neither the bad file nor a .part


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    data = bytes(range(256)) * 800  # 200 kB
    server.files["/big.zip"] = data
    server.cut_after["/big.zip"] = 150_000
    cache = tmp_path / "dl"

    with pytest.raises(NriqaError, match="run again to resume"):
        download(server.url("/big.zip"), md5(data), cache, progressbar=False)
    part = cache / (cache_name(server.url("/big.zip")) + ".part")
    kept = part.stat().st_size
    # Whole chunks are kept; the one being read when the connection broke is not.
    assert 0 < kept <= 150_000
    assert part.read_bytes() == data[:kept]
    assert not (cache / cache_name(server.url("/big.zip"))).exists()

    del server.cut_after["/big.zip"]
    path = download(server.url("/big.zip"), md5(data), cache, progressbar=False)

    assert path.read_bytes() == data
    assert not part.exists()
    assert server.ranges("/big.zip") == [None, f"bytes={kept}-"]


def test_a_server_ignoring_range_restarts_the_download(server, tmp_path):
    data = bytes(range(256)) * 100
    server.files["/f.zip"] = data
    server.honour_range = False
    (tmp_path / (cache_name(server.url("/f.zip")) + ".part")).write_bytes(data[:1000])

    path = download(server.url("/f.zip"), md5(data), tmp_path, progressbar=False)

    assert path.read_bytes() == data  # not the first 1000 bytes twice


def test_a_complete_part_file_is_finished_without_a_body(server, tmp_path):
    # The connection dropped after the last byte but before pooch took over.
    data = b"x" * 1000
    server.files["/f.zip"] = data
    (tmp_path / (cache_name(server.url("/f.zip")) + ".part")).write_bytes(data)

    path = download(server.url("/f.zip"), md5(data), tmp_path, progressbar=False)

    assert path.read_bytes() == data
    assert server.ranges("/f.zip") == ["bytes=1000-"]


def test_http_error_names_the_url(server, tmp_path):
    with pytest.raises(NriqaError, match="/missing.zip"):
        download(server.url("/missing.zip"), "0" * 32, tmp_path, progressbar=False)


def test_md5_is_required_where_no_official_checksum_exists(tmp_path):
    with pytest.raises(NriqaError, match=r"data\.md5 is required for kadid10k"):
        fetch_dataset(data_config(**{"source": "kadid10k", "cache_dir": str(tmp_path)}), tmp_path / "raw")
    with pytest.raises(NriqaError, match=r"data\.md5\.images is required for koniq10k"):
        fetch_dataset(data_config(**{"source": "koniq10k", "md5": {"scores": "0" * 32}, "cache_dir": str(tmp_path)}),
                      tmp_path / "raw")
    with pytest.raises(NriqaError, match="must be a mapping"):
        fetch_dataset(data_config(**{"source": "koniq10k", "md5": "0" * 32, "cache_dir": str(tmp_path)}), tmp_path / "raw")
    with pytest.raises(NriqaError, match="32 hexadecimal"):
        fetch_dataset(data_config(**{"source": "kadid10k", "md5": "abc", "cache_dir": str(tmp_path)}), tmp_path / "raw")
    assert_clean(tmp_path / "raw")


def test_cache_dir_is_required_for_downloads(tmp_path):
    with pytest.raises(NriqaError, match=r"data\.cache_dir is empty"):
        fetch_dataset(data_config(source="tid2013", cache_dir=None), tmp_path / "raw")
    assert_clean(tmp_path / "raw")


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(NriqaError, match="data.source"):
        fetch_dataset(data_config(**{"source": "imagenet"}), tmp_path / "raw")


KONIQ_SCORES = make_zip({"koniq10k_scores_and_distributions.csv":
                         b"image_name,MOS,SD\n826373.jpg,3.9,0.6\n"})


def koniq_params(server, tmp_path, images: bytes, images_path: str, scores_path: str) -> dict:
    """KonIQ's two archives served at these paths, and the params that fetch them."""
    server.files[images_path], server.files[scores_path] = images, KONIQ_SCORES
    return {"source": "koniq10k", "cache_dir": str(tmp_path / "dl"),
            "url": {"images": server.url(images_path), "scores": server.url(scores_path)},
            "md5": {"images": md5(images), "scores": md5(KONIQ_SCORES)}}


def test_koniq_gathers_scores_and_images_from_two_archives(server, tmp_path):
    images = make_zip({"koniq10k_1024x768/1024x768/826373.jpg": b"jpeg",
                       "__MACOSX/1024x768/._826373.jpg": b"resource fork"})
    params = koniq_params(server, tmp_path, images, "/i.zip", "/s.zip")
    out = tmp_path / "raw"

    fetch_dataset(data_config(**params), out)

    assert sorted(p.name for p in out.iterdir()) == ["1024x768", "koniq10k_scores_and_distributions.csv"]
    assert (out / "1024x768" / "826373.jpg").read_bytes() == b"jpeg"


def test_koniq_archives_with_the_same_file_name_do_not_collide_in_the_cache(server, tmp_path):
    """A mirror serving both archives under one name from two folders: each keeps its own
    cache entry, so the scores archive does not overwrite the images archive."""
    images = make_zip({"1024x768/826373.jpg": b"jpeg"})
    params = koniq_params(server, tmp_path, images, "/images/data.zip", "/scores/data.zip")

    fetch_dataset(data_config(**params), tmp_path / "raw")
    fetch_dataset(data_config(**params), tmp_path / "raw")  # both stay cached: no download the second time

    assert (tmp_path / "raw" / "1024x768" / "826373.jpg").read_bytes() == b"jpeg"
    assert len(server.requests) == 2
    assert sorted(p.read_bytes() for p in (tmp_path / "dl").iterdir()) == sorted([images, KONIQ_SCORES])


def test_a_download_cached_under_its_bare_name_is_reused(server, tmp_path):
    data = kadid_zip()
    server.files["/kadid10k.zip"] = data
    (tmp_path / "kadid10k.zip").write_bytes(data)  # as earlier versions named it

    path = download(server.url("/kadid10k.zip"), md5(data), tmp_path, progressbar=False)

    assert path.read_bytes() == data and server.requests == []


def test_an_archive_without_the_dataset_is_refused(server, tmp_path):
    data = make_zip({"readme.txt": b"hello"})
    server.files["/kadid10k.zip"] = data
    params = {"source": "kadid10k", "url": server.url("/kadid10k.zip"), "md5": md5(data),
              "cache_dir": str(tmp_path / "dl")}
    with pytest.raises(NriqaError, match="dmos.csv"):
        fetch_dataset(data_config(**params), tmp_path / "raw")
    assert_clean(tmp_path / "raw")


# --------------------------------------------------------------------------
# Zip safety
# --------------------------------------------------------------------------


def _zip_with(info: zipfile.ZipInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("good/first.txt", b"harmless")  # must not be extracted either
        zf.writestr(info, data)
    return buffer.getvalue()


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("info, reason", [
    (zipfile.ZipInfo("../evil.txt"), "'..'"),
    (zipfile.ZipInfo("good/../../evil.txt"), "'..'"),
    (zipfile.ZipInfo("..\\evil.txt"), "'..'"),
    (zipfile.ZipInfo("/etc/evil.txt"), "absolute"),
    (zipfile.ZipInfo("C:/evil.txt"), "drive letter"),
    (_symlink_info("good/link"), "symbolic link"),
])
def test_unsafe_zip_members_are_refused_before_anything_is_written(tmp_path, info, reason):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_with(info, b"/etc/passwd"))
    dest = tmp_path / "dest"

    with pytest.raises(NriqaError) as err:
        extract_archive(archive, dest)

    assert repr(info.filename) in str(err.value) and reason in str(err.value)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()


def test_unsafe_member_through_fetch_leaves_no_output(server, tmp_path):
    data = _zip_with(zipfile.ZipInfo("../evil.txt"))
    server.files["/kadid10k.zip"] = data
    params = {"source": "kadid10k", "url": server.url("/kadid10k.zip"), "md5": md5(data),
              "cache_dir": str(tmp_path / "dl")}
    with pytest.raises(NriqaError, match="evil.txt"):
        fetch_dataset(data_config(**params), tmp_path / "data" / "raw")
    assert_clean(tmp_path / "data" / "raw")
    assert not (tmp_path / "data" / "evil.txt").exists()


def test_truncated_zip_is_refused_naming_the_file(tmp_path):
    archive = tmp_path / "cut.zip"
    archive.write_bytes(kadid_zip()[:150])
    with pytest.raises(NriqaError, match="cut.zip.*truncated or corrupt"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_corrupt_zip_data_leaves_no_partial_extraction(tmp_path):
    payload = b"A" * 5000
    data = bytearray(make_zip({"a/first.txt": b"fine", "a/second.txt": payload}))
    # Damage the second member's compressed bytes; the central directory stays intact.
    at = data.index(b"a/second.txt") + len("a/second.txt") + 2
    data[at:at + 4] = b"\xff\xff\xff\xff"
    archive = tmp_path / "damaged.zip"
    archive.write_bytes(bytes(data))

    with pytest.raises(NriqaError, match="damaged.zip"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------
# RAR
# --------------------------------------------------------------------------


def test_tid2013_rar_is_fetched_and_its_root_found(server, tmp_path):
    data = tid_rar()
    server.files["/tid2013.rar"] = data
    params = {"source": "tid2013", "url": server.url("/tid2013.rar"), "md5": md5(data),
              "cache_dir": str(tmp_path / "dl")}
    out = tmp_path / "raw"

    fetch_dataset(data_config(**params), out)

    assert sorted(p.name for p in out.iterdir()) == [
        "distorted_images", "mos_std.txt", "mos_with_names.txt", "reference_images"]
    assert (out / "distorted_images" / "i01_01_1.bmp").read_bytes() == b"BM fake"


@pytest.mark.skipif(shutil.which("bsdtar") is None, reason="bsdtar (libarchive-tools) not installed")
def test_solid_rar_is_extracted_in_one_bsdtar_pass(tmp_path):
    archive = tmp_path / "solid.rar"
    archive.write_bytes(tid_rar(solid=True))
    extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "tid2013" / "mos_std.txt").read_bytes() == b"0.8\n"


@pytest.mark.parametrize("entry, reason", [
    (("tid2013/link", b"../../etc/passwd", LNK), "is a link"),
    (("../evil.txt", b"x", REG), "'..'"),
    (("/evil.txt", b"x", REG), "absolute"),
    (("tid2013/fifo", b"", stat.S_IFIFO | 0o644), "not a regular file"),
])
def test_unsafe_rar_members_are_refused(tmp_path, entry, reason):
    archive = tmp_path / "bad.rar"
    archive.write_bytes(rar4([("tid2013/ok.txt", b"fine", REG), entry]))
    with pytest.raises(NriqaError) as err:
        extract_archive(archive, tmp_path / "dest")
    assert repr(entry[0]) in str(err.value) and reason in str(err.value)
    assert not (tmp_path / "dest").exists()


@pytest.mark.skipif(shutil.which("bsdtar") is None, reason="bsdtar (libarchive-tools) not installed")
@pytest.mark.parametrize("host_os", [4, 5], ids=["mac_os", "beos"])
def test_a_link_from_a_mac_os_or_beos_entry_is_refused(tmp_path, host_os):
    """bsdtar applies a Unix mode from these hosts too: a symlink the listing did not show."""
    archive = tmp_path / "crafted.rar"
    archive.write_bytes(rar4([("tid2013/ok.txt", b"fine", REG),
                              ("tid2013/link", b"/etc/passwd", LNK, host_os)], solid=True))
    with pytest.raises(NriqaError, match="tid2013/link.*refusing"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_links_and_special_files_in_the_extracted_tree_are_refused(tmp_path):
    from nriqa.data.archives import LIMITS, check_extracted_tree

    archive = tmp_path / "a.rar"
    for name, make, reason in [
        ("symlink", lambda p: p.symlink_to("/etc/passwd"), "a link, tid/symlink"),
        ("hardlink", lambda p: os.link(tmp_path / "outside", p), "a hard link, tid/hardlink"),
        ("fifo", os.mkfifo, "tid/fifo, which is not a regular file"),
    ]:
        dest = tmp_path / name
        (dest / "tid").mkdir(parents=True)
        (dest / "tid" / "ok.txt").write_text("fine")
        (tmp_path / "outside").write_text("secret")
        make(dest / "tid" / name)
        with pytest.raises(NriqaError, match=reason):
            check_extracted_tree(dest, archive, LIMITS)


def test_oversized_and_bomb_archives_are_refused_before_extraction(tmp_path):
    from nriqa.data.archives import ExtractLimits

    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(make_zip({"kadid10k/zeros.bin": bytes(20_000_000)}))
    with pytest.raises(NriqaError, match=r"unpacks to \d+x its size .*decompression bomb"):
        extract_archive(bomb, tmp_path / "dest")  # the default limits
    assert not (tmp_path / "dest").exists()

    archive = tmp_path / "big.rar"
    archive.write_bytes(tid_rar())
    with pytest.raises(NriqaError, match="over the limit of 10"):
        extract_archive(archive, tmp_path / "dest", ExtractLimits(max_bytes=10))
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("archive_name, data, file, folder", [
    ("clash.zip", make_zip({"a": b"a file", "a/b": b"inside it"}), "a", "a/b"),
    ("clash.zip", make_zip({"x/a": b"a file", "x/a/": b""}), "x/a", "x/a/"),
    ("clash.zip", make_zip({"x/a/b/c": b"deep", "x/a": b"a file after"}), "x/a", "x/a/b/c"),
    ("clash.rar", rar4([("a", b"a file", REG), ("a/b", b"inside it", REG)]), "a", "a/b"),
], ids=["zip file then inside it", "zip file then folder", "zip folder then file",
        "rar file then inside it"])
def test_a_member_both_file_and_folder_is_refused_before_anything_is_written(
        tmp_path, archive_name, data, file, folder):
    """Member `a` a file and `a/b` inside it: extraction would fail halfway with a raw
    NotADirectoryError (an exit status 1 and a traceback); it is an NriqaError naming both."""
    archive = tmp_path / archive_name
    archive.write_bytes(data)
    with pytest.raises(NriqaError) as err:
        extract_archive(archive, tmp_path / "dest")
    assert f"member {file!r} is a file, but member {folder!r} needs a folder there" in str(err.value)
    assert not (tmp_path / "dest").exists()


def test_an_error_of_the_file_system_while_extracting_is_an_nriqa_error(tmp_path):
    """Whatever the listing check cannot foresee (here a name longer than the file system
    allows) still ends as an NriqaError naming the archive, with nothing left behind."""
    archive = tmp_path / "long.zip"
    archive.write_bytes(make_zip({"kadid10k/" + "x" * 300 + ".png": b"too long a name"}))
    with pytest.raises(NriqaError, match=r"long.zip: cannot extract it .*File name too long"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_an_archive_with_too_many_members_is_refused(tmp_path):
    from nriqa.data.archives import LIMITS, MAX_MEMBERS, ExtractLimits

    assert LIMITS.max_members == MAX_MEMBERS == 1_000_000
    archive = tmp_path / "many.zip"
    archive.write_bytes(make_zip({f"kadid10k/{i}.png": b"x" for i in range(4)}))
    with pytest.raises(NriqaError, match="many.zip: 4 members, over the limit of 3"):
        extract_archive(archive, tmp_path / "dest", ExtractLimits(max_members=3))
    assert not (tmp_path / "dest").exists()
    archive = tmp_path / "many.rar"
    archive.write_bytes(tid_rar())
    with pytest.raises(NriqaError, match="many.rar: 7 members, over the limit of 3"):
        extract_archive(archive, tmp_path / "dest", ExtractLimits(max_members=3))
    extract_archive(archive, tmp_path / "dest", ExtractLimits(max_members=7))


@pytest.mark.skipif(shutil.which("bsdtar") is None, reason="bsdtar (libarchive-tools) not installed")
def test_a_hanging_bsdtar_is_stopped(tmp_path):
    from nriqa.data.archives import ExtractLimits, run_bsdtar

    stuck = tmp_path / "stuck.rar"
    os.mkfifo(stuck)  # bsdtar waits for a writer that never comes
    (tmp_path / "dest").mkdir()
    with pytest.raises(NriqaError, match="bsdtar took over 0 s"):
        run_bsdtar(stuck, tmp_path / "dest", ExtractLimits(timeout_s=0.2))


def test_truncated_rar_is_refused_naming_the_file(tmp_path):
    data = tid_rar()
    for cut in (30, len(data) - 20):  # inside the headers; inside the last member's data
        archive = tmp_path / "cut.rar"
        archive.write_bytes(data[:cut])
        with pytest.raises(NriqaError, match="cut.rar.*truncated or corrupt"):
            extract_archive(archive, tmp_path / "dest")
        assert not (tmp_path / "dest").exists()


def test_missing_rar_tool_says_what_to_install(tmp_path, monkeypatch):
    import rarfile

    def no_tool(*args, **kwargs):
        raise rarfile.RarCannotExec("Cannot find working tool")

    monkeypatch.setattr(rarfile.RarFile, "extractall", no_tool)
    archive = tmp_path / "t.rar"
    archive.write_bytes(tid_rar())
    with pytest.raises(NriqaError, match="libarchive-tools"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------
# local and synthetic
# --------------------------------------------------------------------------


def test_local_folder_is_copied(tmp_path):
    src = tmp_path / "mine"
    (src / "distorted_images").mkdir(parents=True)
    (src / "mos_with_names.txt").write_text("5.0 i01_01_1.bmp\n")
    out = tmp_path / "raw"

    fetch_dataset(data_config(**{"source": "local", "path": str(src), "format": "tid2013"}), out)

    assert (out / "mos_with_names.txt").read_text() == "5.0 i01_01_1.bmp\n"
    assert (out / "distorted_images").is_dir()
    assert (src / "mos_with_names.txt").exists()  # copied, not moved


def test_local_missing_or_empty_folder_is_named(tmp_path):
    missing, empty = tmp_path / "nowhere", tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "raw"
    with pytest.raises(NriqaError, match=f"{missing}.*does not exist"):
        fetch_dataset(data_config(**{"source": "local", "path": str(missing), "format": "tid2013"}), out)
    with pytest.raises(NriqaError, match=f"{empty}.*empty"):
        fetch_dataset(data_config(**{"source": "local", "path": str(empty), "format": "tid2013"}), out)
    with pytest.raises(NriqaError, match="data.format"):
        fetch_dataset(data_config(**{"source": "local", "path": str(empty), "format": "imagenet"}), out)
    assert_clean(out)


@pytest.fixture
def failing_synthetic(monkeypatch):
    """A generator that writes half a file, then fails: what a crash mid-way leaves."""
    def generate_tid2013_like(out_dir, **kwargs):
        (Path(out_dir) / "half-written.bmp").write_bytes(b"")
        raise RuntimeError("generator failed")

    monkeypatch.setattr("nriqa.data.sources.generate_tid2013_like", generate_tid2013_like)


def test_synthetic_source_generates_what_its_params_ask(tmp_path):
    """Every data param reaches the generator: references, size, types, levels and the seed."""
    from PIL import Image

    from nriqa.data.formats import build_index
    from nriqa.data.synthetic import generate_tid2013_like

    params = {"source": "synthetic", "seed": 2013, "num_references": 2, "image_size": [40, 32],
              "distortion_types": [1, 8], "levels": [1, 3]}
    fetch_dataset(data_config(**params), tmp_path / "raw")
    index, report = build_index(tmp_path / "raw", "tid2013")
    assert len(index) == 2 * 2 * 2 and report["unscored"] == []
    assert sorted(index["reference"].unique()) == ["I01", "I02"]
    assert sorted(index["distortion"].unique()) == [1, 8]
    assert sorted(index["level"].unique()) == [1, 3]
    for path in index["path"]:
        with Image.open(tmp_path / "raw" / path) as image:
            assert image.size == (40, 32)
    # The seed too: the same call to the generator writes the same bytes; another seed does not.
    direct = tmp_path / "direct"
    direct.mkdir()
    generate_tid2013_like(direct, num_references=2, image_size=(40, 32), distortion_types=[1, 8],
                          levels=[1, 3], seed=2013, progress=False)
    # Type 1, additive noise, is drawn from the seed.
    noisy = index.set_index(["reference", "distortion", "level"]).loc[("I01", 1, 3), "path"]
    assert (tmp_path / "raw" / noisy).read_bytes() == (direct / noisy).read_bytes()
    fetch_dataset(data_config(**{**params, "seed": 2014}), tmp_path / "other")
    assert (tmp_path / "other" / noisy).exists()
    assert (tmp_path / "other" / noisy).read_bytes() != (direct / noisy).read_bytes()


def test_synthetic_all_types_generates_every_type(tmp_path):
    from nriqa.data.distortions import DISTORTIONS
    from nriqa.data.formats import build_index

    fetch_dataset(data_config(**{"source": "synthetic", "seed": 1, "num_references": 1, "image_size": [32, 32],
                   "distortion_types": "all", "levels": [1]}), tmp_path / "raw")
    index, _ = build_index(tmp_path / "raw", "tid2013")
    assert sorted(index["distortion"]) == sorted(DISTORTIONS) and len(DISTORTIONS) == 24


def test_a_failing_generator_leaves_nothing(tmp_path, failing_synthetic):
    (tmp_path / "raw").mkdir()  # from an earlier run
    with pytest.raises(RuntimeError):
        fetch_dataset(data_config(**{"source": "synthetic", "seed": 13, "num_references": 1,
                       "image_size": [32, 32], "distortion_types": [1], "levels": [1]}),
                      tmp_path / "raw")
    assert_clean(tmp_path / "raw")
