"""What the pinned CPU kernels cost: training and scoring steps of the default model with oneDNN
on and capped at AVX2 (as every nriqa process runs), with oneDNN's widest kernels for this CPU,
and with TensorFlow's Eigen kernels instead of oneDNN (what TensorFlow runs by itself on a CPU
with AVX2 alone), side by side.

    .venv/bin/python -m benchmarks.bench_cpu_kernels [--rounds 3] [--steps 20]

Each round runs one subprocess per setting, alternating, so a busy machine slows both alike. A
subprocess builds the model from params.yaml, then times `--steps` training steps on batches of
16 images x 4 crops (the default training batch) and as many scoring calls on 48 crops (one
512x384 image). Prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]

STEP_SCRIPT = """
import json, os, sys, time
from nriqa.core.runtime import configure
configure()
if sys.argv[1] == "eigen":
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
elif sys.argv[1] != "pinned":
    os.environ["ONEDNN_MAX_CPU_ISA"] = sys.argv[1]
import numpy as np, tensorflow as tf
from nriqa.core.config import load_config
from nriqa.model.network import make_model
config = load_config()
tf.config.threading.set_intra_op_parallelism_threads(config.train.threads)
tf.config.threading.set_inter_op_parallelism_threads(config.train.threads)
model = make_model(config.model)
size = config.model.input_size
rng = np.random.default_rng(0)
crops = rng.uniform(0, 255, (64, size, size, 3)).astype(np.float32)
target = np.zeros((64, model.output_shape[-1]), np.float32)
model.compile(optimizer="adam", loss="mse")
model.train_on_batch(crops, target); model.predict_on_batch(crops[:48])
steps = int(sys.argv[2])
start = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(crops, target)
train = (time.perf_counter() - start) / steps
start = time.perf_counter()
for _ in range(steps):
    model.predict_on_batch(crops[:48])
score = (time.perf_counter() - start) / steps
print("RESULT", json.dumps({"train_ms": 1000 * train, "score_ms": 1000 * score}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--widest", default="AVX512_CORE_AMX",
                        help="the uncapped setting (oneDNN uses the widest the CPU has up to it)")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"pinned": [], args.widest: [], "eigen": []}
    for round_ in range(args.rounds):
        for setting in results:
            out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, setting, str(args.steps)],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            results[setting].append(json.loads(out.split("RESULT ", 1)[1]))
            print(f"round {round_ + 1} {setting}: {results[setting][-1]}", flush=True)
    medians = {setting: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for setting, runs in results.items()}
    for setting, values in medians.items():
        print(f"{setting}: training step {values['train_ms']:.1f} ms, "
              f"scoring 48 crops {values['score_ms']:.1f} ms (medians)")
    pinned = medians["pinned"]
    for other in (args.widest, "eigen"):
        print(f"pinned / {other} time: training {pinned['train_ms'] / medians[other]['train_ms']:.2f}, "
              f"scoring {pinned['score_ms'] / medians[other]['score_ms']:.2f}")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
