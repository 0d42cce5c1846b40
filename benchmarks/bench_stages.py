"""Time every DVC stage of the default pipeline in a fresh clone; print a Markdown table.

    .venv/bin/python -m benchmarks.bench_stages --repeats 3

Runs `dvc repro --single-item <stage>` stage by stage in pipeline order (the first round
builds everything), then repeats the data stages `--repeats` times with `--force` and reports
the median, then times a no-op `dvc repro`. The clone copies the working tree, so uncommitted
edits are measured too. Pass `--keep DIR` to keep the clone: about 8.5 GB (its data/ and the DVC
cache's copy of it), so remove it when done; a full disk fails the next `make test` in pip.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from nriqa.core.runtime import configure
from tests.helpers import VENV_BIN, make_clone, project_env

STAGES = ["fetch", "trainset", "normalize", "preprocess", "baseline", "train", "evaluate", "promote",
          "export", "package"]
REPEATED = ["fetch", "trainset", "normalize", "preprocess"]


def timed(cmd, cwd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="nriqa-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    clone = make_clone(workdir, {})
    env = project_env(clone)
    dvc = str(VENV_BIN / "dvc")
    times = {stage: [timed([dvc, "repro", "-s", stage], clone, env)] for stage in STAGES}
    for _ in range(args.repeats - 1):
        for stage in REPEATED:
            times[stage].append(timed([dvc, "repro", "-f", "-s", stage], clone, env))
    noop = [timed([dvc, "repro"], clone, env) for _ in range(args.repeats)]
    total = sum(t[0] for t in times.values())
    print("| stage | median s | runs |")
    print("|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage} | {statistics.median(times[stage]):.1f} | {len(times[stage])} |")
    print(f"| **whole pipeline, first run** | {total:.1f} | 1 |")
    print(f"| no-op `dvc repro` | {statistics.median(noop):.2f} | {len(noop)} |")
    print(f"\nclone: {clone}")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
