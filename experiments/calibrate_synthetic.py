"""One-off calibration of the synthetic TID2013 stand-in (not needed at run time).

Reads TID2013's per-level statistics (``../shared/reference/tid2013_levels.csv``) and prints:

1. for each distortion type, the strength per level whose median RGB PSNR over the 25 default
   references (512x384) matches TID2013's median PSNR for that type and level.  It measures the median
   PSNR on a log-spaced grid of strengths, makes that curve monotone, and interpolates (integers are
   rounded for integer parameters such as JPEG quality).  TID2013's own PSNR is luma PSNR, but the
   human-label images are graded like RGB-PSNR-calibrated ones (docs/experiments.md), so RGB
   it is.  The result is pasted into
   ``nriqa.data.distortions.CALIBRATED_STRENGTHS``;
2. the per-level mos_std rule's numbers, pasted into ``nriqa.data.synthetic.MOS_STD_BY_LEVEL``.

Run:  .venv/bin/python -m experiments.calibrate_synthetic [path/to/tid2013_levels.csv [types,to,redo]]
"""

from __future__ import annotations

import csv
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nriqa.core.metrics import rgb_psnr
from nriqa.core.runtime import configure
from nriqa.data.distortions import DISTORTIONS
from nriqa.data.synthetic import MAX_REFERENCES, image_rng, load_reference

DEFAULT_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "tid2013_levels.csv"
SIZE = (512, 384)

# Strength grid per type: (low, high, integer?).  Contrast change (17) is calibrated on the deviation
# from 1 and saturation (18) has no usable PSNR target (luma is untouched), so it is set by hand.
GRIDS = {
    1: (0.5, 40, False), 2: (0.2, 20, False), 3: (0.5, 40, False), 4: (0.5, 60, False),
    5: (0.5, 80, False), 6: (0.0002, 0.3, False), 7: (2, 120, False), 8: (0.2, 8, False),
    9: (0.5, 60, False), 10: (1, 100, True), 11: (2, 800, False), 12: (0.2, 400, False),
    13: (0.2, 400, False), 14: (1, 4000, False), 15: (0.5, 400, False), 16: (0.5, 80, False),
    17: (0.01, 0.9, False), 19: (0.002, 0.6, False), 20: (1, 100, True), 21: (0.2, 60, False),
    22: (2, 256, True), 23: (0.05, 12, False), 24: (0.005, 0.97, False),
}
GRID_POINTS = 14
HAND_SET = {18: (0.75, 0.55, 0.4, 0.25, 0.1)}  # chroma factor, decreasing saturation
# TID2013's type 15 PSNR is not monotone in level (26.8, 26.7, 26.4, 26.0, 27.9); ours must be, so we
# aim for a gently falling sequence within 1.5 dB of every TID2013 value.
TARGET_OVERRIDES = {15: (27.5, 27.2, 26.9, 26.6, 26.4)}


def read_targets(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def grid(distortion_type: int) -> np.ndarray:
    low, high, integer = GRIDS[distortion_type]
    values = np.geomspace(low, high, GRID_POINTS)
    return np.unique(np.round(values)) if integer else values


def median_psnr(distortion_type: int, strength: float, level_for_rng: int = 3) -> float:
    psnrs = []
    for reference in range(1, MAX_REFERENCES + 1):
        image = load_reference(reference, SIZE)
        rng = image_rng(2013, reference, distortion_type, level_for_rng)
        distorted = DISTORTIONS[distortion_type].apply_strength(image, strength, rng)
        psnrs.append(rgb_psnr(image, distorted))
    return float(np.median(psnrs))


def psnr_curve(args: tuple[int, str]) -> tuple[int, str, np.ndarray, np.ndarray]:
    distortion_type, variant = args
    strengths = grid(distortion_type)
    if distortion_type == 17:
        factors = 1 - strengths if variant == "decrease" else 1 + strengths
        strengths_for_call = factors[factors > 0.02]
        strengths = strengths[factors > 0.02]
    else:
        strengths_for_call = strengths
    psnrs = np.array([median_psnr(distortion_type, s) for s in strengths_for_call])
    return distortion_type, variant, strengths, psnrs


def strength_for(target_psnr: float, strengths: np.ndarray, psnrs: np.ndarray, integer: bool) -> float:
    # Most parameters lower the PSNR as they grow; quality-like ones (JPEG quality, palette size, kept
    # fraction) raise it.  A running extremum removes sampling wiggles, then log-strength is
    # interpolated against PSNR (np.interp needs increasing x).
    if psnrs[-1] < psnrs[0]:
        log_strength = np.interp(-target_psnr, -np.minimum.accumulate(psnrs), np.log(strengths))
    else:
        log_strength = np.interp(target_psnr, np.maximum.accumulate(psnrs), np.log(strengths))
    value = float(np.exp(log_strength))
    return float(round(value)) if integer else float(f"{value:.4g}")


def main(csv_path: Path, only_types: set[int]) -> None:
    rows = read_targets(csv_path)
    targets = {(int(r["type"]), int(r["level"])): r for r in rows}
    jobs = [(t, "plain") for t in GRIDS if t != 17 and t in only_types] + [(17, v) for v in ("decrease", "increase") if 17 in only_types]
    with ProcessPoolExecutor(max_workers=2) as pool:
        curves = {(t, v): (s, p) for t, v, s, p in pool.map(psnr_curve, jobs)}

    print("CALIBRATED_STRENGTHS = {")
    for distortion_type in sorted(only_types):
        if distortion_type in HAND_SET:
            print(f"    {distortion_type}: {HAND_SET[distortion_type]},")
            continue
        integer = GRIDS[distortion_type][2]
        chosen = []
        for level in range(1, 6):
            target = TARGET_OVERRIDES.get(distortion_type, None)
            target_psnr = target[level - 1] if target else float(targets[(distortion_type, level)]["psnr_median"])
            variant = "plain" if distortion_type != 17 else ("increase" if level % 2 == 0 else "decrease")
            strengths, psnrs = curves[(distortion_type, variant)]
            chosen.append(strength_for(target_psnr, strengths, psnrs, integer))
        print(f"    {distortion_type}: {tuple(chosen)},")
    print("}")

    spreads = {level: [] for level in range(1, 6)}
    for r in rows:
        spreads[int(r["level"])].append((float(r["mos_max"]) - float(r["mos_min"])) / 4)
    print("MOS_STD_BY_LEVEL =", tuple(round(float(np.median(spreads[level])), 5) for level in range(1, 6)))


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    # Optional second argument: a comma-separated list of types to (re)calibrate.
    types = {int(t) for t in sys.argv[2].split(",")} if len(sys.argv) > 2 else set(range(1, 25))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CSV, types)
