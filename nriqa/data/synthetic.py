"""An offline stand-in for TID2013: same layout, same naming mess, synthetic distortions and labels.

:func:`generate_tid2013_like` writes a directory that looks like the TID2013 distribution, so the rest
of the pipeline can be built and tested without downloading the real database:

* ``reference_images/I01.BMP`` ... the last one lowercase (``i25.bmp``), like TID2013.
* ``distorted_images/`` one 24-bit BMP per (reference, type 1..24, level 1..5).
* ``mos_with_names.txt`` (``<mos> <name>`` per line) and ``mos_std.txt`` (one std per line), ordered
  by reference, type, level.

References
    Natural photographs cut from images that ship inside installed packages (scikit-image's bundled
    ``skimage/data`` files, scikit-learn's ``china.jpg``/``flower.jpg``, matplotlib's
    ``grace_hopper.jpg``); nothing is downloaded, and ``skimage.data`` loaders that would fetch over the
    network are never called: files are opened by path inside the package.  Each reference is a fixed
    4:3 region of its source; at the default 512x384 the region is cut at native resolution, with one
    exception: ``chelsea.png`` is only 451x300, so its 400x300 region is upscaled by 1.28.  Other
    sizes resample the region (area averaging when shrinking, bicubic when growing).  Colour photos
    come first; the last six (used only when ``num_references`` > 19) are greyscale photos stored as
    RGB.  Some sources give several crops, disjoint or at most half overlapping: the Hubble deep
    field (4), the retina (3), the astronaut and Grace Hopper photos (2 each).

Distortions
    :mod:`nriqa.data.distortions`, calibrated to TID2013's median PSNR per type and level.

Labels (pseudo-MOS)
    :func:`nriqa.data.labels.level_mos`: TID2013's median MOS for the image's (type, level), on TID2013's
    0..9 scale.  ``mos_std`` is a per-level constant: the median over TID2013's 24 types of
    (max MOS - min MOS) / 4, a range-based standard deviation of how much MOS varies at that level.

Determinism
    Every distorted image draws from its own generator seeded with (seed, reference, type, level), so a
    subset of types, levels or references yields byte-identical images for the triples it shares with
    the full set, and two runs with the same arguments write identical bytes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from nriqa.core.errors import NriqaError
from nriqa.data.distortions import DISTORTIONS, LEVELS, MIN_SIDE, distort
from nriqa.data.labels import level_mos

MAX_REFERENCES = 25

# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceSource:
    """A 4:3 region (left, top, width, height) of an image file bundled inside an installed package."""

    package: str
    path: str
    region: tuple[int, int, int, int]
    description: str


REFERENCE_SOURCES: tuple[ReferenceSource, ...] = (
    ReferenceSource("skimage", "data/astronaut.png", (0, 0, 512, 384), "astronaut portrait and flag"),
    ReferenceSource("skimage", "data/coffee.png", (44, 8, 512, 384), "cup of coffee"),
    ReferenceSource("skimage", "data/rocket.jpg", (64, 21, 512, 384), "rocket on its launch pad"),
    ReferenceSource("sklearn", "datasets/images/china.jpg", (64, 21, 512, 384), "Chinese temple"),
    ReferenceSource("sklearn", "datasets/images/flower.jpg", (64, 21, 512, 384), "flower close-up"),
    ReferenceSource("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (0, 40, 512, 384), "Grace Hopper portrait"),
    ReferenceSource("skimage", "data/motorcycle_left.png", (0, 58, 512, 384), "motorcycle, front"),
    ReferenceSource("skimage", "data/motorcycle_right.png", (229, 58, 512, 384), "motorcycle, rear and workshop"),
    ReferenceSource("skimage", "data/ihc.png", (0, 64, 512, 384), "immunohistochemistry micrograph"),
    ReferenceSource("skimage", "data/chelsea.png", (25, 0, 400, 300), "Chelsea the cat (upscaled 1.28x)"),
    ReferenceSource("skimage", "data/retina.jpg", (60, 450, 512, 384), "retina, optic disc"),
    ReferenceSource("skimage", "data/retina.jpg", (560, 500, 512, 384), "retina, macula"),
    ReferenceSource("skimage", "data/hubble_deep_field.jpg", (0, 0, 512, 384), "Hubble deep field, top left"),
    ReferenceSource("skimage", "data/hubble_deep_field.jpg", (488, 488, 512, 384), "Hubble deep field, bottom right"),
    ReferenceSource("skimage", "data/astronaut.png", (0, 128, 512, 384), "astronaut, suit and helmet"),
    ReferenceSource("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (0, 216, 512, 384), "Grace Hopper, uniform"),
    ReferenceSource("skimage", "data/hubble_deep_field.jpg", (488, 0, 512, 384), "Hubble deep field, top right"),
    ReferenceSource("skimage", "data/hubble_deep_field.jpg", (0, 488, 512, 384), "Hubble deep field, bottom left"),
    ReferenceSource("skimage", "data/retina.jpg", (450, 130, 512, 384), "retina, upper vessels"),
    ReferenceSource("skimage", "data/camera.png", (0, 64, 512, 384), "cameraman (greyscale)"),
    ReferenceSource("skimage", "data/moon.png", (0, 64, 512, 384), "lunar surface (greyscale)"),
    ReferenceSource("skimage", "data/grass.png", (0, 64, 512, 384), "grass texture (greyscale)"),
    ReferenceSource("skimage", "data/gravel.png", (0, 64, 512, 384), "gravel texture (greyscale)"),
    ReferenceSource("skimage", "data/brick.png", (0, 64, 512, 384), "brick wall (greyscale)"),
    ReferenceSource("skimage", "data/cell.png", (74, 83, 512, 384), "cell micrograph (greyscale)"),
)


@lru_cache(maxsize=8)
def _read_source(package: str, path: str) -> np.ndarray:
    location = resources.files(package).joinpath(path)
    if not location.is_file():
        raise NriqaError(f"reference photo {path} is missing from the installed {package} package")
    # The reference photos are the PNG and JPEG files named above; nothing else is opened.
    with Image.open(location, formats=("PNG", "JPEG")) as photo:
        return np.asarray(photo.convert("RGB"))


@lru_cache(maxsize=32)
def load_reference(index: int, image_size: tuple[int, int]) -> np.ndarray:
    """Reference ``index`` (1-based) as a uint8 RGB array of ``image_size`` = (width, height)."""
    source = REFERENCE_SOURCES[index - 1]
    left, top, width, height = source.region
    region = _read_source(source.package, source.path)[top : top + height, left : left + width]
    target_width, target_height = image_size
    # Keep the region's centre and take the largest part of it with the requested aspect ratio.
    if target_width * height > target_height * width:
        kept_height = round(width * target_height / target_width)
        offset = (height - kept_height) // 2
        region = region[offset : offset + kept_height]
    else:
        kept_width = round(height * target_width / target_height)
        offset = (width - kept_width) // 2
        region = region[:, offset : offset + kept_width]
    if region.shape[:2] == (target_height, target_width):
        return np.ascontiguousarray(region)
    shrinking = target_width < region.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(region, (target_width, target_height), interpolation=interpolation)


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------
# mos_std per level 1..5: median over TID2013's 24 types of (mos_max - mos_min) / 4, from
# shared/reference/tid2013_levels.csv.
MOS_STD_BY_LEVEL = (0.29512, 0.36900, 0.38825, 0.43050, 0.41888)


# --------------------------------------------------------------------------------------------------
# TID2013's file names and their case trouble
# --------------------------------------------------------------------------------------------------
def reference_file_name(reference: int, num_references: int) -> str:
    """``I01.BMP`` ..., but the last reference is lowercase (TID2013's ``i25.bmp``)."""
    return f"i{reference:02d}.bmp" if reference == num_references else f"I{reference:02d}.BMP"


def listed_name(reference: int, distortion_type: int, level: int) -> str:
    """The name as ``mos_with_names.txt`` spells it.

    Lowercase, except level 1 of types 1, 11 and 13, which TID2013 lists with a capital ``I``; of
    those, types 1 and 11 also have an uppercase ``.BMP``.
    """
    stem = f"{reference:02d}_{distortion_type:02d}_{level}"
    if level == 1 and distortion_type in (1, 11):
        return f"I{stem}.BMP"
    if level == 1 and distortion_type == 13:
        return f"I{stem}.bmp"
    return f"i{stem}.bmp"


def disk_name(reference: int, distortion_type: int, level: int) -> str:
    """The name of the file on disk, which sometimes differs from the list in the case of I/i or .bmp.

    The rule is arbitrary but fixed, so downstream code must match names case-insensitively.
    """
    listed = listed_name(reference, distortion_type, level)
    stem, extension = listed[1:-4], listed[-4:]
    if listed.startswith("I") and distortion_type == 1:
        return f"i{stem}.bmp"  # differs in both the initial and the extension
    if listed.startswith("I") and distortion_type == 11:
        return f"I{stem}.bmp"  # differs in the extension only
    if listed.startswith("I"):
        return f"i{stem}{extension}"  # differs in the initial only
    mix = reference + distortion_type + level
    initial = "I" if mix % 7 == 0 else "i"
    extension = ".BMP" if mix % 11 == 0 else extension
    return f"{initial}{stem}{extension}"


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """One reference and one distortion type: the unit of work handed to a process."""

    out_dir: Path
    reference: int
    distortion_type: int
    levels: tuple[int, ...]
    image_size: tuple[int, int]
    seed: int
    psnr_matched: bool


def image_rng(seed: int, reference: int, distortion_type: int, level: int) -> np.random.Generator:
    """The random generator of one distorted image, independent of which other images are made."""
    return np.random.default_rng([seed, reference, distortion_type, level])


def _write_bmp(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image, mode="RGB").save(path, format="BMP")


def _run_job(job: _Job) -> list[tuple[str, float, float]]:
    """Make, write and label the images of one job; returns (listed name, mos, mos std) per level."""
    reference_image = load_reference(job.reference, job.image_size)
    rows = []
    for level in job.levels:
        rng = image_rng(job.seed, job.reference, job.distortion_type, level)
        if job.psnr_matched:
            distorted = DISTORTIONS[job.distortion_type].matched(
                reference_image, float(level), int(rng.integers(2**63)),
                raise_contrast=level % 2 == 0)  # as `strength_for`: contrast's even levels raise it
        else:
            distorted = distort(reference_image, job.distortion_type, level, rng)
        _write_bmp(distorted, job.out_dir / "distorted_images" / disk_name(job.reference, job.distortion_type, level))
        mos = level_mos(job.distortion_type, level)
        rows.append((listed_name(job.reference, job.distortion_type, level), mos, MOS_STD_BY_LEVEL[level - 1]))
    return rows


def _validated(values: Iterable[int], allowed: Sequence[int], what: str) -> tuple[int, ...]:
    chosen = tuple(values)
    bad = [v for v in chosen if v not in allowed]
    if bad or not chosen:
        raise NriqaError(f"{what} must be a non-empty selection of {allowed[0]}..{allowed[-1]}, got {list(chosen)!r}")
    return tuple(sorted(set(chosen)))


def generate_tid2013_like(
    out_dir: Path,
    *,
    num_references: int,
    image_size: tuple[int, int],
    levels: Sequence[int],
    seed: int,
    distortion_types: Sequence[int] = range(1, 25),
    psnr_matched: bool = False,
    progress: bool = True,
) -> None:
    """Write a TID2013-format dataset of synthetic distortions into the existing, empty ``out_dir``.

    With ``psnr_matched`` each image's strength is the one that gives TID2013's PSNR for its level
    (`Distortion.matched`), as TID2013 made its images; otherwise the calibrated parameter.

    ``image_size`` is (width, height).  See the module docstring for what is written and how.
    Raises :class:`~nriqa.core.errors.NriqaError` for arguments out of range.
    """
    if not isinstance(num_references, int) or not 1 <= num_references <= MAX_REFERENCES:
        raise NriqaError(f"num_references must be an integer in 1..{MAX_REFERENCES}, got {num_references!r}")
    try:
        width, height = (int(side) for side in image_size)
    except (TypeError, ValueError):
        raise NriqaError(f"image_size must be (width, height), got {image_size!r}") from None
    if min(width, height) < MIN_SIDE:
        raise NriqaError(f"image_size {width}x{height} is too small; both sides must be at least {MIN_SIDE}")
    types = _validated(distortion_types, tuple(DISTORTIONS), "distortion_types")
    chosen_levels = _validated(levels, LEVELS, "levels")
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise NriqaError(f"output directory {out_dir} does not exist")

    (out_dir / "reference_images").mkdir()
    (out_dir / "distorted_images").mkdir()
    for reference in range(1, num_references + 1):
        _write_bmp(load_reference(reference, (width, height)), out_dir / "reference_images" / reference_file_name(reference, num_references))

    jobs = [
        _Job(out_dir, reference, distortion_type, chosen_levels, (width, height), seed, psnr_matched)
        for reference in range(1, num_references + 1)
        for distortion_type in types
    ]
    total_images = len(jobs) * len(chosen_levels)
    # Two processes pay off only when there is enough work to amortize their start-up (~2 s each).
    workers = min(2, os.cpu_count() or 1) if total_images >= 240 else 1
    with tqdm(total=total_images, desc="synthetic TID2013", unit="img", disable=not progress) as bar:
        if workers == 1:
            results = []
            for job in jobs:
                results.append(_run_job(job))
                bar.update(len(chosen_levels))
        else:
            # "spawn" gives fresh interpreters, safe whatever threads the caller has started; map()
            # returns results in job order, so the label files come out in a fixed order.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                results = []
                for rows in pool.map(_run_job, jobs, chunksize=4):
                    results.append(rows)
                    bar.update(len(chosen_levels))

    rows = [row for job_rows in results for row in job_rows]
    (out_dir / "mos_with_names.txt").write_text("".join(f"{mos:.5f} {name}\n" for name, mos, _ in rows))
    (out_dir / "mos_std.txt").write_text("".join(f"{std:.5f}\n" for _, _, std in rows))
