"""Train one recipe on already-built shards and measure it on people and on the test split.

    .venv/bin/python -m experiments.recipe_trial NAME -S train.seed=7 -S model.width=0.5 \\
        [--shards data/processed] [--set data/external/humanlabels]

For comparing recipes quickly on the same data, without the rest of the pipeline: trains with
`nriqa.model.training.train` (params.yaml plus the `-S section.key=value` overrides, values in YAML),
saves the model to `data/experiments/trials/NAME/`, then prints the validation curve, SRCC against the
human-label dev set (built there by `experiments/human_labels.py` if missing) and SRCC on the
test split. One JSON line per trial is appended to `data/experiments/trials/results.jsonl`. The
human-label set is only measured, never trained or early-stopped on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import yaml

from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]
TRIALS = ROOT / "data" / "experiments" / "trials"  # outside the source tree (data/ is ignored)


def main() -> None:
    from experiments.human_labels import build, model_report
    from nriqa.core.config import parse_config
    from nriqa.core.imaging import preprocessing_config
    from nriqa.core.metrics import quality_metrics
    from nriqa.data.formats import build_index
    from nriqa.data.labels import MOS_RANGE
    from nriqa.evaluation.report import distortion_metrics, score_index
    from nriqa.model.bundle import save_bundle
    from nriqa.model.training import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--shards", type=Path, default=ROOT / "data" / "processed")
    parser.add_argument("--set", type=Path, default=ROOT / "data" / "external" / "humanlabels")
    parser.add_argument("--final-epoch", action="store_true",
                        help="keep the last epoch's weights instead of the best validation epoch's, "
                             "so that short screening runs compare recipes without selection noise")
    args = parser.parse_args()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for override in args.overrides:
        key, value = override.split("=", 1)
        section, field = key.split(".")
        params[section][field] = yaml.safe_load(value)
    config = parse_config(params)
    preprocessing = preprocessing_config(config)
    start = time.perf_counter()
    model, result = train(args.shards, config.model, config.train, preprocessing,
                          keep_best_epoch=not args.final_epoch)
    out = TRIALS / args.name
    save_bundle(model, out, {"preprocessing": preprocessing, "mos_range": list(MOS_RANGE)})

    build(args.set)
    people, _ = build_index(args.set, "tid2013")
    people = model_report(score_index(model, preprocessing, people, args.set, progress=False),
                          model, preprocessing, args.set)
    splits = pd.read_csv(args.shards / "splits.csv")
    test = splits[splits["split"] == "test"]
    test = score_index(model, preprocessing, test, args.shards.parent / "raw", progress=False)
    line = {"name": args.name, "overrides": args.overrides, "final_epoch": args.final_epoch,
            "seconds": round(time.perf_counter() - start), "best_epoch": result["best_epoch"],
            "val_srcc": [round(v, 3) for v in result["history"]["val_srcc"]],
            "human_label_srcc": round(people.pop("srcc"), 4),
            "human_label_per_type": {k: round(v, 3) for k, v in people.pop("per_type").items()},
            "human_label": people,
            "test_srcc": round(quality_metrics(test["mos"], test["pred"])["srcc"], 4),
            "test_types": distortion_metrics(test)}
    print(json.dumps(line))
    with (TRIALS / "results.jsonl").open("a") as results:
        results.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
