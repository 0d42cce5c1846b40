"""Agreement with real people: the labeller's and a trained model's SRCC on the human-label dev set.

    .venv/bin/python -m experiments.human_labels [--set DIR] [--model-dir models]

The dev set (`../shared/humanlabels`, read its README) is TID2013's own human MOS on 660
re-made TID2013 images. It is built once into DIR (default `data/external/humanlabels`, about
3 minutes) with its `build.py`. Prints, overall and per distortion type:

* the labeller's fidelity: SRCC between `nriqa.data.labels.level_mos` (which knows each image's
  type and level) and people's MOS, the ceiling that the training labels set;
* with `--model-dir`, the no-reference model's SRCC, through `nriqa.evaluation.report`, the path the
  evaluate stage and `python -m nriqa evaluate` use.

It measures only: nothing here feeds training, validation, early stopping or calibration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.core.runtime import configure

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT.parent / "shared" / "humanlabels" / "build.py"


def build(dev_set: Path) -> None:
    if not (dev_set / "mos_with_names.txt").is_file():
        subprocess.run([sys.executable, str(BUILD), str(dev_set)], check=True)


def labeller_predictions(dev_set: Path) -> pd.DataFrame:
    from nriqa.data.formats import build_index

    index, _ = build_index(dev_set, "tid2013")
    index["pred"] = labeller_scores(index)
    return index


def labeller_scores(frame: pd.DataFrame) -> list[float]:
    """`nriqa.data.labels.level_mos` for each row's type and level: what the training labels say."""
    from nriqa.data.labels import level_mos

    return [level_mos(int(t), float(level)) for t, level in zip(frame["distortion"], frame["level"])]


def scored_dev_set_from_command_line(doc: str):
    """For a script that takes `--model-dir DIR [--set DIR]`: (its arguments, then what
    `scored_dev_set` gives), with `doc`'s first paragraph as the command's description."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=ROOT / "data" / "external" / "humanlabels")
    parser.add_argument("--model-dir", type=Path, required=True)
    args = parser.parse_args()
    return args, *scored_dev_set(args.set, args.model_dir)


def scored_dev_set(dev_set: Path, model_dir: Path):
    """(model, its bundle info, the dev set scored by it with a `labeller` column), the set built
    first if missing."""
    from nriqa.data.formats import build_index
    from nriqa.evaluation.report import score_index
    from nriqa.model.bundle import load_model

    build(dev_set)
    model, info = load_model(model_dir)
    index, _ = build_index(dev_set, "tid2013")
    scored = score_index(model, info["preprocessing"], index, dev_set, progress=False)
    scored["pred"] = scored["pred"].astype(float)
    scored["labeller"] = labeller_scores(scored)
    return model, info, scored


def report(title: str, frame: pd.DataFrame) -> None:
    from nriqa.core.metrics import per_group_srcc, quality_metrics

    overall = quality_metrics(frame["mos"], frame["pred"])
    per_type = per_group_srcc(frame, "distortion")
    print(f"{title}: SRCC {overall['srcc']:.4f}  PLCC (logistic) {overall['plcc_logistic']:.4f}  "
          f"(n={len(frame)})")
    print("  per type: " + "  ".join(f"{int(t)}: {v:.3f}" for t, v in per_type.items()))


def model_report(scored: pd.DataFrame, model, preprocessing: dict, dev_set: Path) -> dict:
    """What a user meets on the dev set, `scored` by `score_index`: SRCC overall and per type;
    at levels 3-5 the type head's top-1 and top-3 accuracy; the 12 pristine references' scores,
    and how often each scores above its own distorted versions at levels 3-5 (overall and per
    type)."""
    from nriqa.core.categories import categorize
    from nriqa.core.metrics import per_group_srcc, quality_metrics
    from nriqa.evaluation.report import distortion_metrics, score_index

    report = {"srcc": quality_metrics(scored["mos"], scored["pred"])["srcc"],
              "per_type": {int(k): v for k, v in per_group_srcc(scored, "distortion").items()}}
    strong = scored[scored["level"] >= 3]
    types = distortion_metrics(strong)
    if types:
        report["top1_levels_3_5"] = types["distortion_accuracy"]
        report["top3_levels_3_5"] = types["distortion_top3_accuracy"]
    references = sorted((dev_set / "reference_images").glob("I*.BMP"))
    pristine = score_index(model, preprocessing, pd.DataFrame(
        {"image": [p.stem.lower() for p in references], "path": [p.name for p in references],
         "mos": np.nan}), dev_set / "reference_images", progress=False)
    pristine_pred = dict(zip(pristine["image"], pristine["pred"]))
    wins = strong.assign(win=[pristine_pred[name[:3].lower()] > pred
                              for name, pred in zip(strong["image"], strong["pred"])])
    report["pristine_scores"] = [round(float(v), 3) for v in pristine["pred"]]
    report["pristine_good_or_better"] = float(np.mean(
        np.isin(categorize(pristine["pred"].to_numpy()), ["Good", "Excellent"])))
    report["pristine_wins_levels_3_5"] = float(wins["win"].mean())
    report["pristine_wins_per_type"] = {int(k): round(float(v), 3) for k, v in
                                        wins.groupby("distortion")["win"].mean().items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=ROOT / "data" / "external" / "humanlabels")
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    build(args.set)
    report("labeller (type and level)", labeller_predictions(args.set))
    if args.model_dir:
        from nriqa.data.formats import build_index
        from nriqa.evaluation.report import score_index
        from nriqa.model.bundle import load_model

        model, info = load_model(args.model_dir)
        index, _ = build_index(args.set, "tid2013")
        scored = score_index(model, info["preprocessing"], index, args.set)
        report(f"model {args.model_dir}", scored)
        print(json.dumps(model_report(scored, model, info["preprocessing"], args.set)))


if __name__ == "__main__":
    configure()  # as every entry point: CPU kernels pinned, start-up banners filtered
    main()
