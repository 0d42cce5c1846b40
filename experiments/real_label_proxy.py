"""A stand-in for a small real-label dataset, to see whether the recipe learns from one.

    .venv/bin/python -m experiments.real_label_proxy data/raw /tmp/proxy
    .venv/bin/python -m experiments.real_label_proxy --photos /tmp/photo-proxy
    .venv/bin/python -m experiments.real_label_proxy --photos --foreign --label-noise /tmp/photo-proxy-foreign

The acceptance check trains on a TID2013-layout folder with real human MOS (1,320 images, 11
types, a content-disjoint split) and compares the CNN with the BRISQUE + SVR baseline. That
folder is not here, and the human-label dev set must never be trained on. This writes the
nearest stand-in from our own data: the synthetic dataset (RAW_DIR, TID2013 layout) cut to the
human-label set's 11 types on 24 references (1,320 images), each labelled as people's scores
behave, per image: its RGB PSNR against its reference mapped through its type's per-level
curve (TID2013's median PSNR -> median MOS, `shared/reference/tid2013_levels.csv`). Such labels
move with content inside a (type, level) cell, as people's do and the generator's cell medians
do not; on the human-label set they reach SRCC 0.94 against real MOS (docs/experiments.md).

``--photos`` makes the references from photographs instead (the real folder's are Kodak
photographs, on which BRISQUE does far better than on the synthetic set's star fields and
micrographs): 24 of the generated training set's photographs (`nriqa.data.trainset`), each
shrunk to a 512-pixel short side (Kodak's) and cut to 512x384 at its centre, distorted by
`nriqa.data.distortions.distort` at levels 1-5. Those photographs also feed the generated
training images, so a mixed run would see the test content: the script prints the photos of the
validation and test references (params.yaml's `preprocess` split; `--split-seed` another seed), to leave out of
`TRAINING_PHOTOS` in the clone that runs it.

Run the pipeline on it with `data.source: local`, `data.path: OUT_DIR`, and compare `test.srcc`
with `baseline.srcc`. Without `--foreign` the stand-in flatters the CNN: its images come from
the generator the CNN's generated training images come from. BENCHMARKS has the figures.

``--foreign`` (with ``--photos``) distorts them with library calls instead of the generator's
code (scikit-image's noise, SciPy's filters, Pillow's codecs and palette), each image's strength
searched so that its RGB PSNR meets TID2013's median for the level, as TID2013 set its own. The
CNN has then never seen these distortions' exact look, as with a real folder; the BRISQUE
baseline never has either way.

``--label-noise`` makes the labels as noisy as people's: TID2013's real MOS scatters about the
per-type PSNR curve, part shared by all levels of one type on one content, part per image. The
script measures both parts on TID2013's 3,000 scores (`shared/humanlabels/tid2013_scores.csv`)
and adds seeded Gaussian noise of those sizes. Harsher than people: their shared part follows
content, which a model could learn; this noise follows nothing.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]
LEVELS_CSV = ROOT.parent / "shared" / "reference" / "tid2013_levels.csv"
SCORES_CSV = ROOT.parent / "shared" / "humanlabels" / "tid2013_scores.csv"
TYPES = (1, 2, 3, 5, 6, 7, 8, 10, 11, 19, 22)  # the human-label set's
REFERENCES = 24


def psnr_label(distortion: int, psnr: float, curves: pd.DataFrame) -> float:
    """MOS from PSNR through the type's per-level medians (PSNR ascending), held at the ends."""
    curve = curves[curves["type"] == distortion].sort_values("psnr_median")
    return float(np.interp(psnr, curve["psnr_median"], curve["mos_median"]))


def human_scatter(curves: pd.DataFrame) -> tuple[float, float]:
    """Std of TID2013's MOS about the PSNR curve: (shared per content and type, per image)."""
    scores = pd.read_csv(SCORES_CSV)
    scores["reference"] = scores["name"].str[1:3].astype(int)
    scores["type"] = scores["name"].str[4:6].astype(int)
    residual = scores["mos"] - [psnr_label(t, psnr, curves) for t, psnr in zip(scores["type"], scores["psnr"])]
    shared = residual.groupby([scores["reference"], scores["type"]]).transform("mean")
    return float(shared.std()), float((residual - shared).std())


def add_label_noise(lines: list[tuple[float, str]], curves: pd.DataFrame,
                    seed: int = 2013) -> list[tuple[float, str]]:
    """Labels plus people's scatter (`human_scatter`), clipped to TID2013's 0-9 scale."""
    shared_std, image_std = human_scatter(curves)
    rng = np.random.default_rng(seed)
    cells = sorted({name[:6] for _, name in lines})  # "I01_02": reference and type
    shared = dict(zip(cells, rng.normal(0, shared_std, len(cells))))
    noise = rng.normal(0, image_std, len(lines))
    print(f"label noise: std {shared_std:.3f} per content and type, {image_std:.3f} per image")
    return [(float(np.clip(mos + shared[name[:6]] + extra, 0, 9)), name)
            for (mos, name), extra in zip(lines, noise)]


def foreign_distortion(distortion: int, strength: float, image: np.ndarray, seed) -> np.ndarray:
    """TID2013 type `distortion` on uint8 RGB `image` by library calls, not `nriqa.data.distortions`;
    PSNR falls as `strength` grows."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2ycbcr, ycbcr2rgb
    from skimage.util import random_noise

    rng = np.random.default_rng(seed)
    x = image.astype(np.float64) / 255
    if distortion in (10, 11, 22):  # codecs and palettes, through Pillow
        buffer, pil = io.BytesIO(), Image.fromarray(image)
        if distortion == 22:
            # Pillow dithers only towards a given palette: the palette first, then the dithering.
            palette = pil.quantize(colors=257 - int(strength))
            return np.asarray(pil.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
                              .convert("RGB"))
        if distortion == 10:
            pil.save(buffer, format="JPEG", quality=101 - int(strength))
        else:
            pil.save(buffer, format="JPEG2000", quality_mode="rates", quality_layers=[strength])
        return np.asarray(Image.open(buffer).convert("RGB"))
    if distortion == 1:
        out = random_noise(x, mode="gaussian", var=strength ** 2, rng=rng)
    elif distortion == 2:  # noise in the chroma channels only
        ycc = rgb2ycbcr(x)
        ycc[..., 1:] += rng.normal(0, strength * 224, ycc.shape[:2] + (2,))
        out = ycbcr2rgb(ycc)
    elif distortion in (3, 5):  # low-passed (spatially correlated) or high-passed white noise
        noise = rng.normal(size=x.shape)
        low = gaussian_filter(noise, sigma=(1.5, 1.5, 0))
        noise = low if distortion == 3 else noise - low
        out = x + strength * noise / noise.std()
    elif distortion == 6:
        out = random_noise(x, mode="s&p", amount=strength, rng=rng)
    elif distortion == 7:  # uniform quantization of every channel
        out = np.round(x / strength) * strength
    elif distortion == 8:
        out = gaussian_filter(x, sigma=(strength, strength, 0))
    elif distortion == 19:
        out = random_noise(x, mode="speckle", var=strength ** 2, rng=rng)
    else:
        raise ValueError(f"no library distortion for type {distortion}")
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


# Strength ranges searched, (low, high, integer): from nothing visible to past TID2013's level 5.
FOREIGN_RANGES = {1: (1e-3, 0.5, False), 2: (1e-3, 0.8, False), 3: (1e-3, 0.5, False),
                  5: (1e-3, 1.0, False), 6: (1e-5, 0.5, False), 7: (1e-3, 0.5, False),
                  8: (0.05, 20.0, False), 10: (1, 100, True), 11: (1.0, 2000.0, False),
                  19: (1e-3, 2.0, False), 22: (1, 255, True)}


def psnr_matched(distortion: int, pristine: np.ndarray, target: float, seed) -> np.ndarray:
    """`foreign_distortion` at the strength whose RGB PSNR is nearest `target` (bisection)."""
    from nriqa.core.metrics import rgb_psnr

    low, high, integer = FOREIGN_RANGES[distortion]
    tried = {}  # strength -> (RGB PSNR, image)

    def attempt(strength):
        image = foreign_distortion(distortion, strength, pristine, seed)
        tried[strength] = (rgb_psnr(pristine, image), image)
        return tried[strength][0]

    for _ in range(16):
        middle = (low + high) // 2 if integer else float(np.sqrt(low * high))
        if middle in tried or (integer and high - low <= 1):
            break
        if attempt(middle) > target:
            low = middle
        else:
            high = middle
    for end in (low, high):
        if end not in tried:
            attempt(end)
    return min(tried.values(), key=lambda tried_one: abs(tried_one[0] - target))[1]


def write_photo_proxy(out_dir: Path, curves: pd.DataFrame, split_seed: int | None,
                      foreign: bool = False, seed: int = 2013) -> list[tuple[float, str]]:
    """24 photographic references, 11 types x 5 levels each; returns (label, name) per image."""
    import cv2

    from nriqa.core.metrics import rgb_psnr
    from nriqa.data.distortions import distort
    from nriqa.data.shards import split_by_reference
    from nriqa.data.trainset import TRAINING_PHOTOS

    photos = sorted(np.random.default_rng(seed).choice(len(TRAINING_PHOTOS), REFERENCES, replace=False))
    lines, references = [], []
    for number, photo in enumerate(photos, start=1):
        reference = f"I{number:02d}"
        with Image.open(TRAINING_PHOTOS[photo][1]) as image:
            rgb = np.asarray(image.convert("RGB"))
        scale = 512 / min(rgb.shape[:2])
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
        top, left = (rgb.shape[0] - 384) // 2, (rgb.shape[1] - 512) // 2
        pristine = np.ascontiguousarray(rgb[top:top + 384, left:left + 512])
        Image.fromarray(pristine).save(out_dir / "reference_images" / f"{reference}.BMP")
        references.append((reference, str(TRAINING_PHOTOS[photo][1])))
        for distortion in TYPES:
            for level in range(1, 6):
                if foreign:
                    target = curves[(curves["type"] == distortion) & (curves["level"] == level)]
                    distorted = psnr_matched(distortion, pristine, float(target["psnr_median"].iloc[0]),
                                             [seed, number, distortion, level])
                else:
                    distorted = distort(pristine, distortion, level,
                                        np.random.default_rng([seed, number, distortion, level]))
                name = f"{reference}_{distortion:02d}_{level}.bmp"
                Image.fromarray(distorted).save(out_dir / "distorted_images" / name)
                lines.append((psnr_label(distortion, rgb_psnr(pristine, distorted), curves), name))
    preprocess = yaml.safe_load((ROOT / "params.yaml").read_text())["preprocess"]
    splits = split_by_reference(pd.DataFrame({"reference": [r for r, _ in references]}),
                                preprocess["split"],
                                seed=preprocess["seed"] if split_seed is None else split_seed)
    held_out = [photo for (reference, photo), split in zip(references, splits["split"]) if split != "train"]
    print("photos of the validation and test references (leave them out of TRAINING_PHOTOS):",
          " ".join(held_out))
    return lines


def write_synthetic_proxy(raw_dir: Path, out_dir: Path, curves: pd.DataFrame) -> list[tuple[float, str]]:
    """The synthetic dataset's first 24 references, its images of the 11 types copied; returns
    (label, name) per image."""
    from nriqa.core.metrics import rgb_psnr
    from nriqa.data.formats import build_index

    index, _ = build_index(raw_dir, "tid2013")
    references = sorted(index["reference"].unique())[:REFERENCES]
    index = index[index["distortion"].isin(TYPES) & index["reference"].isin(references)]
    reference_files = {path.stem.upper(): path for path in (raw_dir / "reference_images").iterdir()}
    lines = []
    for reference, rows in index.groupby("reference", sort=True):
        source = reference_files[reference.upper()]
        shutil.copyfile(source, out_dir / "reference_images" / f"{reference}.BMP")
        pristine = np.asarray(Image.open(source).convert("RGB"))
        for row in rows.itertuples():
            distorted = np.asarray(Image.open(raw_dir / row.path).convert("RGB"))
            name = f"{reference}_{int(row.distortion):02d}_{int(row.level)}.bmp"
            shutil.copyfile(raw_dir / row.path, out_dir / "distorted_images" / name)
            lines.append((psnr_label(int(row.distortion), rgb_psnr(pristine, distorted), curves), name))
    return lines


def write_labels(out_dir: Path, lines: list[tuple[float, str]]) -> None:
    (out_dir / "mos_with_names.txt").write_text("".join(f"{mos:.5f} {name}\n" for mos, name in lines))
    (out_dir / "mos_std.txt").write_text("".join("0.5\n" for _ in lines))
    labels = np.array([mos for mos, _ in lines])
    references = len({name[:3] for _, name in lines})
    print(f"{len(lines)} images, {references} references, {len(TYPES)} types; "
          f"MOS {labels.min():.2f}..{labels.max():.2f} -> {out_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_dir", type=Path, nargs="?", metavar="RAW_DIR", help="the synthetic dataset (TID2013 layout)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--photos", action="store_true", help="photographic references instead")
    parser.add_argument("--split-seed", type=int, help="the clone's preprocess.seed, if not params.yaml's (--photos)")
    parser.add_argument("--foreign", action="store_true", help="--photos distorted by library calls")
    parser.add_argument("--label-noise", action="store_true", help="add people's scatter to the labels")
    args = parser.parse_args()
    if args.foreign and not args.photos:
        parser.error("--foreign distorts the --photos references")
    if args.raw_dir is None and not args.photos:
        parser.error("RAW_DIR (the synthetic dataset) is needed without --photos")
    curves = pd.read_csv(LEVELS_CSV)
    shutil.rmtree(args.out_dir, ignore_errors=True)
    (args.out_dir / "distorted_images").mkdir(parents=True)
    (args.out_dir / "reference_images").mkdir()
    if args.photos:
        lines = write_photo_proxy(args.out_dir, curves, args.split_seed, args.foreign)
    else:
        lines = write_synthetic_proxy(args.raw_dir, args.out_dir, curves)
    write_labels(args.out_dir, add_label_noise(lines, curves) if args.label_noise else lines)


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
