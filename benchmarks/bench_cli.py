"""CLI scoring throughput on 512x384 images, model beside model and beside BRISQUE, in one run.

    .venv/bin/python -m benchmarks.bench_cli MODEL_DIR [MODEL_DIR ...] [--images 96] [--repeats 3]
        [--pretrained-brisque PYTHON]

A MODEL_DIR holding model.onnx (the export stage's models/portable) is scored with
`--runtime onnx`, so `models models/portable` sets the two runtimes side by side.

Writes `--images` 512x384 JPEGs (TID2013's size; photos that ship in scikit-image, cropped and
distorted), then for each round times `python -m nriqa score DIR --model-dir MODEL_DIR` whole,
process start and model load included, and the BRISQUE features that the baseline's SVR needs
(`nriqa.evaluation.baseline.features_for_paths`, both cores). With `--pretrained-brisque PYTHON`,
also PyPI's `brisque` package (its SVR pretrained on LIVE), as a user would score a folder with it:
a process of that interpreter, which has the package, timed whole like the CLI. It lives in an
environment of its own because it does not run on this project's NumPy (BENCHMARKS.md says how to
make one). Prints images/s per round and the medians; the rounds interleave, so a busy machine
slows every contender alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int) -> list[Path]:
    import skimage.data
    from PIL import Image

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)]).convert("RGB").resize((512, 384))
        noisy = np.asarray(photo, np.float32) + rng.normal(0, 2 * (i % 5), (384, 512, 3))
        paths.append(folder / f"image{i:03d}.jpg")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def time_cli(model_dir: Path, folder: Path, count: int) -> float:
    start = time.perf_counter()
    runtime = "onnx" if (model_dir / "model.onnx").is_file() else "keras"
    subprocess.run([sys.executable, "-m", "nriqa", "score", str(folder), "--model-dir",
                    str(model_dir), "--runtime", runtime, "-o", str(folder.parent / "scores.csv")],
                   cwd=ROOT, check=True, capture_output=True)
    return count / (time.perf_counter() - start)


def time_brisque(paths: list[Path]) -> float:
    from nriqa.evaluation.baseline import features_for_paths

    start = time.perf_counter()
    features_for_paths(paths, progress=False)
    return len(paths) / (time.perf_counter() - start)


PRETRAINED_BRISQUE = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from brisque import BRISQUE
model = BRISQUE(url=False)
for path in sorted(Path(sys.argv[1]).glob("*.jpg")):
    print(path.name, model.score(np.asarray(Image.open(path).convert("RGB"))))
"""


def time_pretrained_brisque(python: Path, folder: Path, count: int) -> float:
    start = time.perf_counter()
    scored = subprocess.run([str(python), "-c", PRETRAINED_BRISQUE, str(folder)], check=True,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if (scored_count := len(scored.stdout.splitlines())) != count:
        raise SystemExit(f"error: the pretrained BRISQUE scored {scored_count} of {count} images")
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pretrained-brisque", type=Path, metavar="PYTHON",
                        help="a Python interpreter that has PyPI's brisque package")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        paths = write_images(folder, args.images)
        rates: dict[str, list[float]] = {str(d): [] for d in args.model_dirs}
        rates["BRISQUE features"] = []
        if args.pretrained_brisque:
            rates["pretrained BRISQUE"] = []
        for round_ in range(args.repeats):
            for model_dir in args.model_dirs:
                rates[str(model_dir)].append(time_cli(model_dir, folder, args.images))
            rates["BRISQUE features"].append(time_brisque(paths))
            if args.pretrained_brisque:
                rates["pretrained BRISQUE"].append(
                    time_pretrained_brisque(args.pretrained_brisque, folder, args.images))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()),
                  flush=True)
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):.1f} images/s "
              f"({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
