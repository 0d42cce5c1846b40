"""The Spark engine against the single-process CLI on the same images, side by side in one run.

    .venv/bin/python -m benchmarks.bench_spark [MODEL_DIR] [--images 2000] [--repeats 1]
        [--masters local[1] local[2]]

Writes `--images` 512x384 JPEGs (`benchmarks.bench_cli.write_images`), then for each round
times, whole (process start, JVM start and model loads included), `python -m nriqa score DIR`
(the CLI, one process) and `python -m nriqa score DIR --engine spark --master M --out OUT` for
each master; the job's own rate, from its first commit to its last, is read from its progress
lines. Each Spark run writes a fresh OUT. Then checks that every engine scored the same
images the same (MOS within 1e-4, the same category) and prints the medians.

MODEL_DIR defaults to a bundle of params.yaml's model (the default architecture, ImageNet
weights where params.yaml says so, heads untrained): the same work per image as the trained
model, for a machine where no pipeline has run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_cli import write_images
from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]


def default_model(folder: Path) -> Path:
    """A bundle of params.yaml's model, its heads untrained (the same work per image)."""
    from nriqa.core.config import load_config
    from nriqa.core.imaging import preprocessing_config
    from nriqa.model.bundle import save_bundle
    from nriqa.model.network import make_model

    config = load_config(ROOT / "params.yaml")
    return save_bundle(make_model(config.model), folder,
                       {"preprocessing": preprocessing_config(config), "mos_range": [0.0, 9.0]})


def time_cli(model_dir: Path, images: Path, out: Path) -> tuple[float, None]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nriqa", "score", str(images), "--model-dir",
                    str(model_dir), "--format", "jsonl", "-o", str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start, None


def time_spark(model_dir: Path, images: Path, out: Path, master: str,
               commit_every: int) -> tuple[float, float]:
    """(wall seconds, the job's images/s from its own progress line)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nriqa", "score", str(images), "--engine",
                           "spark", "--master", master, "--model-dir", str(model_dir), "--out",
                           str(out), "--commit-every", str(commit_every)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{master}: exit {done.returncode}\n{done.stderr[-4000:]}")
    rates = re.findall(r"committed \d+ of \d+ \(([\d.]+) images/s\)", done.stderr)
    return wall, float(rates[-1])


def compare(cli_rows: Path, spark_out: Path) -> dict:
    import pandas as pd

    cli = {row["path"]: row for row in map(json.loads, cli_rows.read_text().splitlines())}
    spark = pd.read_parquet(spark_out)
    delta = max(abs(row.mos - cli[row.path]["mos"]) for row in spark.itertuples())
    return {"rows": len(spark), "cli_rows": len(cli), "same_paths": set(spark.path) == set(cli),
            "max_abs_mos": delta,
            "same_category": all(row.category == cli[row.path]["category"]
                                 for row in spark.itertuples())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, nargs="?", help="a bundle (default: see above)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--masters", nargs="+", default=["local[1]", "local[2]"])
    parser.add_argument("--commit-every", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nriqa-bench-spark-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or default_model(tmp / "model")
        images = tmp / "images"
        images.mkdir()
        write_images(images, args.images)
        walls: dict[str, list[float]] = {"cli": []}
        rates: dict[str, list[float]] = {}
        checks = {}
        for _ in range(args.repeats):
            wall, _ = time_cli(model_dir, images, tmp / "cli.jsonl")
            walls["cli"].append(wall)
            print(f"cli: {args.images / wall:.2f} images/s ({wall:.0f} s)", flush=True)
            for master in args.masters:
                out = tmp / f"spark-{master}.parquet"
                wall, rate = time_spark(model_dir, images, out, master, args.commit_every)
                walls.setdefault(master, []).append(wall)
                rates.setdefault(master, []).append(rate)
                checks[master] = compare(tmp / "cli.jsonl", out)
                print(f"spark {master}: {args.images / wall:.2f} images/s whole "
                      f"({wall:.0f} s), {rate:.2f} images/s in the job; {checks[master]}",
                      flush=True)
        print(f"\n{args.images} images of 512x384, {args.repeats} round(s), medians:")
        print("| engine | images/s, whole run | images/s, job only | seconds |")
        print("|---|---:|---:|---:|")
        for name, times in walls.items():
            wall = statistics.median(times)
            job = f"{statistics.median(rates[name]):.2f}" if name in rates else "–"
            print(f"| {name} | {args.images / wall:.2f} | {job} | {wall:.0f} |")
        print(json.dumps(checks, indent=2))


if __name__ == "__main__":
    configure()
    main()
