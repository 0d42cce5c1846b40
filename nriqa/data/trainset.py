"""The training set: many contents, every distortion at continuous strengths, labelled by people's
rules (`nriqa.data.labels`).

Fifteen training contents made the network learn its references rather than quality, so the
training images come from photographs that none of the validation or test references are cut
from: the 54 photos that ship in six Debian packages (`make system-deps` installs them).

* ``mate-backgrounds`` (``/usr/share/backgrounds/mate/nature``), GPL-2+ (Debian's copyright
  file names each photographer): Aqua, LadyBird, YellowFlower, Garden and TwoWings (Charles
  Barbin), Blinds (Lennart Poettering, Andrea Cimitan), Dune (Marco Cogoni), FreshFlower
  (Jens Ansorg), GreenMeadow (Timothy Schellhase), RainDrops ("blackcombwhistler07"), Storm
  (Sergey Nazarov), Wood (Jean-François Fortin Tam).
* ``plasma-workspace-wallpapers`` (``/usr/share/wallpapers/<name>/contents/images``), GPL-2+
  in Debian's copyright, LGPL-3 in each wallpaper's metadata.json except Volna (CC-BY-SA-4.0):
  BytheWater (Maciej Wiklo), ColdRipple, DarkestHour, Kite, OneStandsOut, Path and
  summer_1am (Risto Saukonpää), ColorfulCups (Dmitri Popov), EveningGlow (Ian Hex),
  FallenLeaf (Martin Klapetek), Grey (Sigi Sagi), Volna (Nikita Babin).
  The wallpapers' illustrations and renders are left out: they are not photographs.
* ``lomiri-wallpapers-16.04`` (``/usr/share/backgrounds``), each photo's licence per Debian's
  copyright file: Bridge (Sander Klootwijk), Dragonfly ("Bolly"), analogpattern, free and
  greentock (Peter Nerlich), CC-BY-SA-4.0; Picture_0B and Picture_1A (Trevor "Freespace"), Wine
  (Jakub Mede), aitzgorri, friends, life, picosdeeuropa and sunset (Aitzol Berasategi),
  CC-BY-4.0; seeding (Clemens Engelhardt), CC0-1.0. Ordinary camera photographs (rooms, a
  dog, a fig, brushes, a clock, mountains, a stream), less stylized than the wallpapers above;
  umang, a render, is left out.
* ``lxqt-themes`` (``/usr/share/lxqt/wallpapers``), CC-BY-SA-3.0 in the folder's License file
  (LGPL-2.1+ in Debian's copyright): after-the-rain, appleflower, butterfly, drop, flowers, fog
  and this-is-not-windows ("stefonarch"), Butterfly (Kenneth Wimer), cloud and Valendas (the
  LXQt team). The wallpapers' renders and logos are left out.
* ``sddm-theme-maldives`` (``/usr/share/sddm/themes/maldives/background.jpg``), CC-BY-3.0,
  Nevit Dilmen: a jetty on a beach (maldives.jpg beside it is a screenshot, left out).
* ``palapeli-data`` (``/usr/share/palapeli/collection``), each photo's author and licence in its
  .desktop file: castle-maintenon (Eric Pouhier, GFDL), panther-chameleon-female (B. Navez,
  GFDL), cincinnati-bridge (Derek Jensen), citrus-fruits (USDA) and european-honey-bee (John
  Severns), public domain. JPEGs of quality 80, shrunk at least 3.5 times here, where the
  compression's blocks vanish.

Every image draws from its own generator seeded with (seed, image number): a photo, a scale
(the photo is shrunk so that its short side is 1-1.3 times the image's, ``trainset.shrink``),
a crop, a flip, a TID2013 type and a strength position uniform over
[0.5, 5.5] on the level scale (`Distortion.strength_at`). The same seed writes the same bytes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from nriqa.core.errors import NriqaError
from nriqa.data.distortions import DISTORTIONS, MAX_POSITION, MIN_POSITION, MIN_SIDE
from nriqa.data.formats import INDEX_COLUMNS
from nriqa.data.labels import PRISTINE_MOS, level_mos

_MATE = Path("/usr/share/backgrounds/mate/nature")
_PLASMA = Path("/usr/share/wallpapers")
_LOMIRI = Path("/usr/share/backgrounds")
_LXQT = Path("/usr/share/lxqt/wallpapers")
_PALAPELI = Path("/usr/share/palapeli/collection")
TRAINING_PHOTOS: tuple[tuple[str, Path], ...] = (
    *(("mate-backgrounds", _MATE / f"{name}.jpg") for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
        "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")),
    *(("plasma-workspace-wallpapers", _PLASMA / name / "contents/images" / size) for name, size in (
        ("BytheWater", "2560x1600.jpg"), ("ColdRipple", "2560x1600.jpg"),
        ("ColorfulCups", "2560x1600.jpg"), ("DarkestHour", "2560x1600.jpg"),
        ("EveningGlow", "2560x1600.jpg"), ("FallenLeaf", "2560x1600.jpg"),
        ("Grey", "2560x1600.jpg"), ("Kite", "2560x1600.jpg"),
        ("OneStandsOut", "2560x1600.jpg"), ("Path", "2560x1600.jpg"),
        ("Volna", "5120x2880.jpg"), ("summer_1am", "2560x1600.jpg"))),
    *(("lomiri-wallpapers-16.04", _LOMIRI / f"{name}.jpg") for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
        "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
        "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi")),
    *(("lxqt-themes", _LXQT / name) for name in (
        "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png",
        "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg",
        "this-is-not-windows.jpg")),
    ("sddm-theme-maldives", Path("/usr/share/sddm/themes/maldives/background.jpg")),
    *(("palapeli-data", _PALAPELI / f"{name}.jpg") for name in (
        "castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee",
        "panther-chameleon-female")),
)
INDEX_NAME = "index.csv"
# How far each photo is shrunk: its short side becomes low..high times the image's (params.yaml's
# `trainset.shrink`). Shrunk 2-4 times, the crops had a third of the high-frequency detail of
# TID2013's Kodak references; people's SRCC over 3 seeds was 0.814 at 2-4 times, 0.826 at 1-2 and
# 0.833 at 1-1.3 (docs/experiments.md).
SHRINK = (1.0, 1.3)


def check_photos(photos=TRAINING_PHOTOS) -> None:
    """Fail early, naming the Debian package to install, when a photo is missing."""
    missing = sorted({package for package, path in photos if not path.is_file()})
    if missing:
        raise NriqaError(f"training photos are missing; install the Debian package(s) {' '.join(missing)} "
                         f"(`make system-deps` does it)")


@lru_cache(maxsize=None)  # a few hundred MB: every image picks a photo at random
def _photo(index: int) -> np.ndarray:
    # The training photos are the JPEG and PNG files named above; nothing else is opened.
    with Image.open(TRAINING_PHOTOS[index][1], formats=("JPEG", "PNG")) as photo:
        return np.asarray(photo.convert("RGB"))


def reference_crop(rng: np.random.Generator, image_size: tuple[int, int],
                   shrink: tuple[float, float] = SHRINK) -> tuple[int, np.ndarray]:
    """(photo number, a pristine crop of ``image_size`` = (width, height)) drawn by ``rng``."""
    width, height = image_size
    index = int(rng.integers(len(TRAINING_PHOTOS)))
    photo = _photo(index)
    # Shrink so that the photo's short side is `shrink` times the crop's (see SHRINK).
    scale = rng.uniform(*shrink) * min(width, height) / min(photo.shape[:2])
    size = (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale)))
    shrunk = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    top = int(rng.integers(shrunk.shape[0] - height + 1))
    left = int(rng.integers(shrunk.shape[1] - width + 1))
    crop = shrunk[top:top + height, left:left + width]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return index, np.ascontiguousarray(crop)


def make_image(seed: int, number: int, image_size: tuple[int, int], types: Sequence[int],
               pristine_fraction: float, psnr_matched: bool = False,
               shrink: tuple[float, float] = SHRINK):
    """Image ``number``: (uint8 RGB image, index row without the path). With ``psnr_matched``,
    the strength is the one that gives TID2013's PSNR for the drawn level (`Distortion.matched`),
    otherwise the calibrated parameter at that level."""
    rng = np.random.default_rng([seed, number])
    photo, reference = reference_crop(rng, image_size, shrink)
    row = {"image": f"T{number:05d}.png", "reference": f"P{photo:02d}", "mos_std": 0.0}
    if rng.random() < pristine_fraction:
        # No distortion, so no type to learn (0) and no level.
        return reference, {**row, "distortion": 0, "level": None, "mos": round(PRISTINE_MOS, 5)}
    distortion = DISTORTIONS[int(types[int(rng.integers(len(types)))])]
    position = float(rng.uniform(MIN_POSITION, MAX_POSITION))
    raise_contrast = bool(rng.random() < 0.5)
    if psnr_matched:
        distorted = distortion.matched(reference, position, int(rng.integers(2**63)),
                                       raise_contrast=raise_contrast)
    else:
        strength = distortion.strength_at(position, raise_contrast=raise_contrast)
        distorted = distortion.apply_strength(reference, strength, rng)
    return distorted, {**row, "distortion": distortion.number, "level": round(position, 3),
                       "mos": round(level_mos(distortion.number, position, raise_contrast), 5)}


def _make_chunk(args) -> list[dict]:
    out_dir, seed, numbers, image_size, types, pristine_fraction, psnr_matched, shrink = args
    rows = []
    for number in numbers:
        image, row = make_image(seed, number, image_size, types, pristine_fraction, psnr_matched,
                                shrink)
        # Fastest PNG compression: the file is read once, by preprocess.
        Image.fromarray(image).save(out_dir / "images" / row["image"], compress_level=1)
        rows.append({**row, "path": f"images/{row['image']}"})
    return rows


def generate_training_set(out_dir: Path, *, num_images: int, image_size: tuple[int, int],
                          seed: int, pristine_fraction: float,
                          distortion_types: Sequence[int] = tuple(DISTORTIONS),
                          psnr_matched: bool = False, shrink: tuple[float, float] = SHRINK,
                          progress: bool = True) -> pd.DataFrame:
    """Write ``images/T00000.png``... and ``index.csv`` (`nriqa.data.formats` columns) into the
    existing, empty ``out_dir``; returns the index."""
    if not isinstance(num_images, int) or num_images < 1:
        raise NriqaError(f"trainset.images must be a positive integer, got {num_images!r}")
    if not 1.0 <= shrink[0] <= shrink[1]:
        raise NriqaError(f"trainset.shrink must be [low, high] with 1 <= low <= high, got {list(shrink)!r}")
    if not 0.0 <= pristine_fraction < 1.0:
        raise NriqaError(f"trainset.pristine_fraction must be in [0, 1), got {pristine_fraction!r}")
    width, height = (int(side) for side in image_size)
    if min(width, height) < MIN_SIDE:
        raise NriqaError(f"trainset.image_size {width}x{height} is too small; both sides must be at least {MIN_SIDE}")
    types = tuple(sorted(set(int(t) for t in distortion_types)))
    if not types or any(t not in DISTORTIONS for t in types):
        raise NriqaError(f"trainset.distortion_types must be TID2013 types 1..24, got {list(distortion_types)!r}")
    check_photos()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir()
    chunk = 50
    jobs = [(out_dir, seed, range(start, min(start + chunk, num_images)), (width, height), types,
             float(pristine_fraction), psnr_matched, tuple(shrink))
            for start in range(0, num_images, chunk)]
    # Processes ("spawn": fresh interpreters) pay off only for more than one chunk.
    pool = (ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1),
                                mp_context=multiprocessing.get_context("spawn"))
            if len(jobs) > 1 else None)
    rows = []
    with pool or nullcontext(), tqdm(total=num_images, desc="training set", unit="img",
                                     disable=not progress) as bar:
        # map() keeps job order, so the index comes out in a fixed order.
        for chunk_rows in (pool.map if pool else map)(_make_chunk, jobs):
            rows.extend(chunk_rows)
            bar.update(len(chunk_rows))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    index.to_csv(out_dir / INDEX_NAME, index=False)
    return index
