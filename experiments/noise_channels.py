"""How much noise each YCbCr channel carries: pristine photos against their colour-noise and AWGN
copies, on the human-label dev set and on the generated training images.

    .venv/bin/python -m experiments.noise_channels [--set DIR] [--trainset data/trainset]

Prints the median of Immerkaer's fast noise estimate (the mean absolute response to a 3x3 mask that
cancels smooth structure; texture raises it too) per channel and per level. It shows where colour
noise can be seen: on the Kodak references the luma estimate barely moves with its level, buried
under the scans' grain and texture, while the chroma estimates rise level by level. It measures
only: nothing here feeds training or calibration.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]
MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=float)
CHANNELS = ("Y", "Cb", "Cr")


def noise_estimate(path: Path) -> list[float]:
    """Immerkaer's sigma of each of Y, Cb and Cr (grey levels)."""
    ycc = np.asarray(Image.open(path).convert("YCbCr"), dtype=float)
    return [float(np.sqrt(np.pi / 2) / 6 * np.abs(ndimage.convolve(ycc[..., c], MASK)[1:-1, 1:-1]).mean())
            for c in range(3)]


def table(rows: list[tuple[str, Path]]) -> pd.DataFrame:
    values = pd.DataFrame([[group, *noise_estimate(path)] for group, path in rows],
                          columns=["images", *CHANNELS])
    return values.groupby("images", sort=False)[list(CHANNELS)].median().round(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=ROOT / "data" / "external" / "humanlabels")
    parser.add_argument("--trainset", type=Path, default=ROOT / "data" / "trainset")
    args = parser.parse_args()
    references = sorted((args.set / "reference_images").glob("I*.BMP"))
    rows = [("pristine", path) for path in references]
    for distortion, name in ((2, "colour noise"), (1, "AWGN")):
        rows += [(f"{name} level {level}",
                  args.set / "distorted_images" / f"{path.stem.lower()}_{distortion:02d}_{level}.bmp")
                 for level in range(1, 6) for path in references]
    print(f"human-label dev set ({len(references)} references)\n{table(rows).to_string()}\n")
    index = pd.read_csv(args.trainset / "index.csv")
    rows = [("pristine", args.trainset / path) for path in index.loc[index["distortion"] == 0, "path"]]
    noisy = index[index["distortion"] == 2]
    rows += [(f"colour noise level {round(level)}", args.trainset / path)
             for path, level in zip(noisy["path"], noisy["level"])]
    print(f"training images ({args.trainset})\n{table(sorted(rows, key=lambda row: row[0])).to_string()}")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
