"""Turn any supported dataset folder into one index table.

Each dataset ships its scores differently; the rest of the pipeline only ever
sees this index, one row per scored image:

========== =============================================================
image      canonical image name (``I01_01_1.bmp``, ``I01_01_01.png``, ...)
reference  id of the pristine content the image shows (``I01``); images
           sharing it must stay in one split. In-the-wild sets without
           references (KonIQ-10k) use the image's own stem.
distortion distortion type number, or empty where there is none
level      distortion level, or empty where there is none
mos        mean opinion score as the dataset defines it (higher is better)
mos_std    standard deviation of the opinions behind ``mos``
path       the file, relative to the dataset root, with ``/`` separators
========== =============================================================

Score tables and folders do not always agree, so every listed name is matched
to the files on disk case-insensitively (the real TID2013 lists
``i01_01_2.bmp`` but also ``I01_01_1.BMP``, and the disk does not always use
the same case).  The index is built only if every scored entry resolves to
exactly one file; otherwise a :class:`NriqaError` lists what is wrong.  Files
that nobody scored are only reported.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nriqa.core.config import DataConfig
from nriqa.core.errors import NriqaError

# The image files a dataset's image folder may hold, and that `python -m nriqa score` finds in
# a folder: Pillow (`nriqa.core.imaging.decode_image`) reads them all.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
INDEX_COLUMNS = ["image", "reference", "distortion", "level", "mos", "mos_std", "path"]

FORMATS = ("tid2013", "kadid10k", "koniq10k")
# Each layout's MOS scale, (lowest, highest): TID2013's 0..9 (nriqa.data.labels.MOS_RANGE),
# KADID-10k's DMOS and KonIQ-10k's MOS 1..5.
MOS_SCALES = {"tid2013": (0.0, 9.0), "kadid10k": (1.0, 5.0), "koniq10k": (1.0, 5.0)}

# How many names an error message or log line spells out before "and N more".
_SHOWN = 10


def dataset_format(data: DataConfig) -> str:
    """The layout of ``data/raw`` for the given ``data`` params.

    The synthetic generator writes TID2013's layout, so it shares its reader.
    """
    if data.source in ("synthetic", "tid2013"):
        return "tid2013"
    return data.format if data.source == "local" else data.source


def uses_trainset(mix: bool | str, data: DataConfig) -> bool:
    """Whether the generated training set joins the training split: `trainset.mix`, where
    `auto` means when the dataset's labels are on TID2013's scale."""
    return dataset_format(data) == "tid2013" if mix == "auto" else mix


def build_index(raw_dir: Path, fmt: str) -> tuple[pd.DataFrame, dict]:
    """Index the dataset rooted at ``raw_dir`` laid out as ``fmt``.

    Returns the index (columns :data:`INDEX_COLUMNS`, in score-file order) and
    a report: lists ``unmatched``, ``unscored``, ``duplicates``, ``unparsable``
    and their ``counts``.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise NriqaError(f"dataset folder {raw_dir} does not exist")
    readers = {"tid2013": _read_tid2013, "kadid10k": _read_kadid10k, "koniq10k": _read_koniq10k}
    if fmt not in readers:
        raise NriqaError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    entries, unparsable, image_dir, not_images = readers[fmt](raw_dir)
    return _resolve(raw_dir, fmt, entries, unparsable, image_dir, not_images)


# --------------------------------------------------------------------------
# Matching score entries to files
# --------------------------------------------------------------------------


@dataclass
class _Entry:
    """One scored image as its score table gives it."""

    listed: str  # the name as written in the score table
    image: str  # canonical name
    reference: str
    distortion: int | None
    level: int | None
    mos: float
    mos_std: float


def _resolve(raw_dir: Path, fmt: str, entries: list[_Entry], unparsable: list[str],
             image_dir: Path, not_images: set[str]) -> tuple[pd.DataFrame, dict]:
    # All image files in the folder, grouped by lower-cased name: a group of
    # two means two files that differ only in case.
    on_disk: dict[str, list[str]] = {}
    with os.scandir(image_dir) as it:
        for item in it:
            if item.is_file() and Path(item.name).suffix.lower() in IMAGE_SUFFIXES:
                on_disk.setdefault(item.name.lower(), []).append(item.name)
    folder = image_dir.relative_to(raw_dir).as_posix()

    rows, unmatched, duplicates, seen = [], [], [], set()
    for entry in entries:
        key = entry.listed.lower()
        if key in seen:
            duplicates.append(f"{entry.listed} (listed twice)")
            continue
        seen.add(key)
        files = sorted(on_disk.get(key, []))
        if not files:
            unmatched.append(entry.listed)
        elif len(files) > 1:
            duplicates.append(f"{entry.listed} (matches {', '.join(files)})")
        else:
            rows.append({
                "image": entry.image, "reference": entry.reference,
                "distortion": entry.distortion, "level": entry.level,
                "mos": entry.mos, "mos_std": entry.mos_std,
                "path": f"{folder}/{files[0]}" if folder != "." else files[0],
            })
    unscored = sorted(name for key, names in on_disk.items()
                      if key not in seen and key not in not_images for name in names)

    report = {
        "format": fmt,
        "raw_dir": str(raw_dir),
        "unmatched": unmatched,
        "unscored": unscored,
        "duplicates": duplicates,
        "unparsable": unparsable,
        "counts": {
            "scored": len(entries) + len(unparsable),
            "indexed": len(rows),
            "files": sum(len(v) for v in on_disk.values()),
            "unmatched": len(unmatched),
            "unscored": len(unscored),
            "duplicates": len(duplicates),
            "unparsable": len(unparsable),
        },
    }
    problems = [
        (unparsable, "score entries cannot be parsed"),
        (unmatched, f"scored images have no file in {image_dir}"),
        (duplicates, "scored images do not resolve to exactly one file"),
    ]
    message = "; ".join(f"{len(names)} {what}: {_some(names)}" for names, what in problems if names)
    if message:
        raise NriqaError(f"{fmt} dataset in {raw_dir}: {message}")
    if not rows:
        raise NriqaError(f"{fmt} dataset in {raw_dir} has no scored images")

    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    index["distortion"] = index["distortion"].astype("Int64")
    index["level"] = index["level"].astype("Int64")
    index[["mos", "mos_std"]] = index[["mos", "mos_std"]].astype(float)
    return index, report


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _child(parent: Path, name: str, *, want_dir: bool) -> Path:
    """``parent / name``, accepting any letter case; a clear error if absent."""
    exact = parent / name
    if exact.is_dir() if want_dir else exact.is_file():
        return exact
    for item in parent.iterdir():
        if item.name.lower() == name.lower() and (item.is_dir() if want_dir else item.is_file()):
            return item
    kind = "folder" if want_dir else "file"
    raise NriqaError(f"{exact} is missing: expected the {kind} {name} in the dataset root {parent}")


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------
# TID2013
# --------------------------------------------------------------------------

# I<reference>_<type>_<level>.bmp, any case.
_TID_NAME = re.compile(r"^i(\d{2})_(\d{2})_(\d)\.bmp$", re.IGNORECASE)


def _read_tid2013(raw_dir: Path):
    """``mos_with_names.txt`` (``<mos> <name>``) and ``mos_std.txt`` (same order)."""
    names_file = _child(raw_dir, "mos_with_names.txt", want_dir=False)
    std_file = _child(raw_dir, "mos_std.txt", want_dir=False)
    image_dir = _child(raw_dir, "distorted_images", want_dir=True)

    lines = [line.split() for line in _lines(names_file)]
    stds = [line.strip() for line in _lines(std_file)]
    if len(stds) != len(lines):
        raise NriqaError(f"{std_file} has {len(stds)} values but {names_file} lists {len(lines)} images; "
                         f"they must correspond line by line")

    entries, unparsable = [], []
    for number, (fields, std) in enumerate(zip(lines, stds), start=1):
        where = f"{names_file.name} line {number}"
        match = _TID_NAME.match(fields[-1]) if len(fields) == 2 else None
        mos, mos_std = _number(fields[0]), _number(std)
        if match is None or mos is None or mos_std is None:
            unparsable.append(f"{where}: {' '.join(fields)!r} (std {std!r})")
            continue
        ref, kind, level = match.groups()
        entries.append(_Entry(
            listed=fields[1], image=f"I{ref}_{kind}_{level}.bmp", reference=f"I{ref}",
            distortion=int(kind), level=int(level), mos=mos, mos_std=mos_std,
        ))
    return entries, unparsable, image_dir, set()


def _lines(path: Path) -> list[str]:
    """Non-blank lines; tolerant of Windows line endings and stray bytes."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------
# KADID-10k
# --------------------------------------------------------------------------

# I<reference>_<type 01-25>_<level 01-05>.png
_KADID_NAME = re.compile(r"^(i\d+)_(\d{2})_(\d{2})\.png$", re.IGNORECASE)


def _read_kadid10k(raw_dir: Path):
    """``dmos.csv`` (``dist_img,ref_img,dmos,var``) and the ``images/`` folder.

    ``dmos`` runs from 1 to 5 with higher meaning better, so it is the MOS as
    far as the pipeline is concerned; ``var`` is the variance of the ratings.
    """
    table_file = _child(raw_dir, "dmos.csv", want_dir=False)
    image_dir = _child(raw_dir, "images", want_dir=True)
    table = _read_csv(table_file, ["dist_img", "ref_img", "dmos", "var"])

    entries, unparsable = [], []
    for number, row in enumerate(table.itertuples(index=False), start=2):
        name = str(row.dist_img).strip()
        match = _KADID_NAME.match(name)
        mos, var = _number(row.dmos), _number(row.var)
        if match is None or mos is None or var is None or var < 0:
            unparsable.append(f"{table_file.name} row {number}: {name!r}")
            continue
        ref, kind, level = match.groups()
        entries.append(_Entry(
            listed=name, image=f"I{ref[1:]}_{kind}_{level}.png", reference=f"I{ref[1:]}",
            distortion=int(kind), level=int(level), mos=mos, mos_std=math.sqrt(var),
        ))
    # The pristine references share images/ with the distorted ones; they are
    # not scored, and that is expected rather than worth reporting.
    references = {str(r).strip().lower() for r in table["ref_img"]}
    return entries, unparsable, image_dir, references


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise NriqaError(f"{path} is not a readable CSV file: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise NriqaError(f"{path} lacks the column(s) {', '.join(missing)}; it has {', '.join(table.columns)}")
    return table


# --------------------------------------------------------------------------
# KonIQ-10k
# --------------------------------------------------------------------------


def _read_koniq10k(raw_dir: Path):
    """``koniq10k_scores_and_distributions.csv`` and the ``1024x768/`` folder.

    KonIQ photos are authentic, not derived from references: each image is its
    own content group, and there is no distortion type or level.
    """
    table_file = _child(raw_dir, "koniq10k_scores_and_distributions.csv", want_dir=False)
    image_dir = _child(raw_dir, "1024x768", want_dir=True)
    table = _read_csv(table_file, ["image_name", "MOS", "SD"])

    entries, unparsable = [], []
    for number, row in enumerate(table.itertuples(index=False), start=2):
        name = str(row.image_name).strip()
        mos, sd = _number(row.MOS), _number(row.SD)
        if not name or Path(name).suffix.lower() not in IMAGE_SUFFIXES or mos is None or sd is None:
            unparsable.append(f"{table_file.name} row {number}: {name!r}")
            continue
        entries.append(_Entry(
            listed=name, image=name, reference=Path(name).stem,
            distortion=None, level=None, mos=mos, mos_std=sd,
        ))
    return entries, unparsable, image_dir, set()
