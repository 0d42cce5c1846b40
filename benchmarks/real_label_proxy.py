"""A stand-in for a small real-label dataset, to see whether the recipe learns from one.

    .venv/bin/python benchmarks/real_label_proxy.py data/raw /tmp/proxy

The acceptance check trains on a TID2013-layout folder with real human MOS (1,320 images, 11
types, a content-disjoint split) and compares the CNN with the BRISQUE + SVR baseline. That
folder is not here, and the human-label dev set must never be trained on. This writes the
nearest stand-in from our own data: the synthetic dataset (RAW_DIR, TID2013 layout) cut to the
human-label set's 11 types on 24 references (1,320 images), each labelled as people's scores
behave, per image: its RGB PSNR against its reference mapped through its type's per-level
curve (TID2013's median PSNR -> median MOS, `shared/reference/tid2013_levels.csv`). Such labels
move with content inside a (type, level) cell, as people's do and the generator's cell medians
do not; on the human-label set they reach SRCC 0.94 against real MOS (session 3).

Run the pipeline on it with `data.source: local`, `data.path: OUT_DIR`, and compare `test.srcc`
with `baseline.srcc`. The stand-in flatters the CNN: its images come from the generator the
CNN's generated training images come from. A CNN that loses here would lose on real data too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LEVELS_CSV = ROOT.parent / "shared" / "reference" / "tid2013_levels.csv"
TYPES = (1, 2, 3, 5, 6, 7, 8, 10, 11, 19, 22)  # the human-label set's
REFERENCES = 24


def psnr_label(distortion: int, psnr: float, curves: pd.DataFrame) -> float:
    """MOS from PSNR through the type's per-level medians (PSNR ascending), held at the ends."""
    curve = curves[curves["type"] == distortion].sort_values("psnr_median")
    return float(np.interp(psnr, curve["psnr_median"], curve["mos_median"]))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from nriqa.data.formats import build_index
    from nriqa.evaluation.metrics import rgb_psnr

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_dir", type=Path, help="the synthetic dataset (TID2013 layout)")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    curves = pd.read_csv(LEVELS_CSV)
    index, _ = build_index(args.raw_dir, "tid2013")
    references = sorted(index["reference"].unique())[:REFERENCES]
    index = index[index["distortion"].isin(TYPES) & index["reference"].isin(references)]
    shutil.rmtree(args.out_dir, ignore_errors=True)
    (args.out_dir / "distorted_images").mkdir(parents=True)
    (args.out_dir / "reference_images").mkdir()
    reference_files = {path.stem.upper(): path for path in (args.raw_dir / "reference_images").iterdir()}
    lines = []
    for reference, rows in index.groupby("reference", sort=True):
        source = reference_files[reference.upper()]
        shutil.copyfile(source, args.out_dir / "reference_images" / f"{reference}.BMP")
        pristine = np.asarray(Image.open(source).convert("RGB"))
        for row in rows.itertuples():
            distorted = np.asarray(Image.open(args.raw_dir / row.path).convert("RGB"))
            name = f"{reference}_{int(row.distortion):02d}_{int(row.level)}.bmp"
            shutil.copyfile(args.raw_dir / row.path, args.out_dir / "distorted_images" / name)
            lines.append((psnr_label(int(row.distortion), rgb_psnr(pristine, distorted), curves), name))
    (args.out_dir / "mos_with_names.txt").write_text("".join(f"{mos:.5f} {name}\n" for mos, name in lines))
    (args.out_dir / "mos_std.txt").write_text("".join("0.5\n" for _ in lines))
    labels = np.array([mos for mos, _ in lines])
    print(f"{len(lines)} images, {len(references)} references, {len(TYPES)} types; "
          f"MOS {labels.min():.2f}..{labels.max():.2f} -> {args.out_dir}")


if __name__ == "__main__":
    main()
