"""Fetch a dataset into ``data/raw``: download, verify, extract, publish atomically.

The ``data`` section of params.yaml names a source:

``synthetic``
    a small TID2013-like set generated from a seed (:mod:`nriqa.data.synthetic`);
``tid2013`` / ``kadid10k`` / ``koniq10k``
    the official archives, downloaded into ``data.cache_dir``
    (:mod:`nriqa.data.downloads`: kept between runs, an interrupted download
    resumes) and extracted with :mod:`nriqa.data.archives`, which treats them
    as untrusted input;
``local``
    an already extracted copy of one of those datasets (``data.path``, laid
    out as ``data.format``), copied in.

Whatever the source, ``out_dir`` ends up holding the dataset root itself (for
TID2013 the folder with ``mos_with_names.txt``), and it appears only when
everything succeeded: the work happens in a sibling ``.tmp-<name>`` folder that
is renamed into place at the end and removed on any failure.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from nriqa.core.config import DataConfig
from nriqa.core.errors import NriqaError
from nriqa.core.stage import staging
from nriqa.data.archives import extract_archive
from nriqa.data.downloads import download
from nriqa.data.synthetic import generate_tid2013_like

log = logging.getLogger(__name__)


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


def fetch_dataset(data: DataConfig, out_dir: Path) -> None:
    """Materialise the dataset described by ``data`` at ``out_dir``.

    ``out_dir`` is replaced as a whole: on success it holds the dataset root;
    on failure it does not exist and no temporary folder is left behind.
    Downloads stay in ``data.cache_dir`` for the next run.
    """
    source = data.source
    out_dir = Path(out_dir)
    with staging(out_dir) as tmp:
        if source == "synthetic":
            root = _build_synthetic(data, tmp)
        elif source == "local":
            root = _copy_local(data, tmp)
        else:
            root = _download_and_extract(source, data, tmp)
        # The rename is the commit point: the folder appears complete or not at all.
        os.rename(root, out_dir)
    log.info("dataset ready in %s", out_dir)


# --------------------------------------------------------------------------
# synthetic and local
# --------------------------------------------------------------------------


def _build_synthetic(data: DataConfig, tmp: Path) -> Path:
    options = dict(
        num_references=data.num_references,
        image_size=data.image_size,
        levels=data.levels,
        seed=data.seed,
        psnr_matched=data.strength == "psnr",
        progress=True,
    )
    # "all" is params.yaml's word for the generator's default: every type it knows.
    types = data.distortion_types
    if types != "all":
        options["distortion_types"] = types
    root = tmp / "dataset"
    root.mkdir()  # the generator writes into an existing, empty folder
    generate_tid2013_like(root, **options)
    return root


def _copy_local(data: DataConfig, tmp: Path) -> Path:
    raw = data.path
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


def _download_and_extract(source: str, data: DataConfig, tmp: Path) -> Path:
    archives = resolve_archives(source, data)
    if not data.cache_dir:
        raise NriqaError(f"data.cache_dir is empty; source: {source} needs a folder to keep downloads in")
    cache_dir = Path(data.cache_dir)
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


def resolve_archives(source: str, data: DataConfig) -> dict[str, Archive]:
    """The archives to fetch for ``source``, with params.yaml's overrides applied.

    For single-archive datasets ``url`` and ``md5`` are strings.  KonIQ-10k has
    two archives, so there they are mappings by role: ``{images: ..., scores: ...}``.
    """
    official = OFFICIAL[source]
    urls = _by_role(source, "url", data.url, official)
    md5s = _by_role(source, "md5", data.md5, official)
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
