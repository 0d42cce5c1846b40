"""DVC stage `evaluate`: test-split metrics, the baseline stage's beside them, tables and plots, and
the same model measured on each labelled folder of `evaluate.external` (see
nriqa/evaluation/external.py).

Results are also added to the training's MLflow run, named by the model folder's mlflow_run.json.
"""

import argparse
from pathlib import Path

import pandas as pd

from nriqa.core.categories import CATEGORY_NAMES
from nriqa.core.config import load_config
from nriqa.core.stage import stage_main, write_json
from nriqa.evaluation import external, plots
from nriqa.evaluation.report import (
    TYPE_ACCURACY_COLUMNS,
    add_baseline,
    add_categories,
    distortion_accuracy_table,
    distortion_confusion,
    per_distortion_table,
    per_level_table,
    rounded,
    score_test_split,
    summarize,
    test_set_digest,
)
from nriqa.model.bundle import load_model
from nriqa.ops import tracking


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="the dataset (test images)")
    parser.add_argument("--splits", type=Path, required=True,
                        help="splits.csv of the preprocess stage; its summary.json lies beside it")
    parser.add_argument("--model", type=Path, required=True,
                        help="folder with model.keras, model.json and mlflow_run.json")
    parser.add_argument("--baseline", type=Path, required=True,
                        help="the baseline stage's test-split predictions")
    parser.add_argument("--history", type=Path, required=True, help="train_history.csv")
    parser.add_argument("--reports", type=Path, required=True, help="folder to write into")
    return parser.parse_args()


@stage_main
def main():
    args = parse_args()
    reports = args.reports
    config = load_config()
    # Checked first: an unreachable tracking server should not cost a whole evaluation.
    run = tracking.open_pointer(args.model / "mlflow_run.json")
    # So are the external folders: a mistyped path must not wait for the test split.
    # Relative paths are the project's, also under `dvc exp run --temp` (which runs in a copy).
    folders = external.open_folders(config.evaluate.external, tracking.project_root())
    thresholds = config.evaluate.categories
    model, info = load_model(args.model)
    splits = pd.read_csv(args.splits)
    test = score_test_split(model, info["preprocessing"], splits, args.raw)
    test = add_categories(add_baseline(test, args.baseline), thresholds)
    metrics, confusion = summarize(test, thresholds)
    results = {folder.name: external.evaluate_folder(model, info["preprocessing"], folder)
               for folder in folders}
    if results:
        metrics["external"] = {name: result.metrics for name, result in results.items()}
    metrics = rounded(metrics)

    reports.mkdir(exist_ok=True)
    # In summarize's order, test figures first (test.srcc leads): `dvc exp show` takes its
    # columns in file order.
    write_json(reports / "metrics.json", metrics, sort_keys=False)
    write_json(reports / "confusion.json", {"labels": CATEGORY_NAMES, "matrix": confusion})
    columns = ["image", "reference", "distortion", "level", "mos", "pred", "baseline_pred",
               "category", "predicted_category", "pred_distortion", "pred_top3"]
    test.reindex(columns=columns).round(4).to_csv(reports / "predictions.csv", index=False)
    per_distortion = per_distortion_table(test)
    per_distortion.to_csv(reports / "per_distortion.csv", index=False)
    per_level_table(test).to_csv(reports / "per_level.csv", index=False)
    # A declared output: only the header where there is no type head or no types.
    type_accuracy = distortion_accuracy_table(test)
    (type_accuracy if type_accuracy is not None else pd.DataFrame(columns=TYPE_ACCURACY_COLUMNS)
     ).to_csv(reports / "type_accuracy.csv", index=False)
    external.reset_dir(reports / "external")  # a declared output, so it exists even when empty
    external_files = [path for name, result in results.items()
                      for path in external.write_reports(name, result, reports / "external")]
    external.write_summary(results, reports / "external")

    figures = reports / "figures"
    figures.mkdir(exist_ok=True)
    plots.scatter_plot(test["mos"], test["pred"], figures / "scatter.png",
                       f"CNN on the test split (SRCC {metrics['test']['srcc']:.3f})")
    plots.per_distortion_plot(
        {"cnn": dict(zip(per_distortion["distortion"], per_distortion["cnn_srcc"])),
         "baseline": dict(zip(per_distortion["distortion"], per_distortion["baseline_srcc"]))},
        figures / "per_distortion.png", "SRCC per distortion type (test)")
    plots.confusion_plot(confusion, CATEGORY_NAMES, figures / "confusion.png")
    if "distortion_accuracy" in metrics["test"]:
        types, counts = distortion_confusion(test)
        plots.confusion_plot(counts, [str(t) for t in types], figures / "distortion_confusion.png",
                             f"Distortion type, true vs predicted (test; accuracy "
                             f"{metrics['test']['distortion_accuracy']:.2f})", truth="true type")
    history = pd.read_csv(args.history)
    plots.training_curves_plot({c: history[c].tolist() for c in ("loss", "val_srcc")},
                               figures / "training_curves.png")
    tracking.log_evaluation(run, metrics, {
        "": [Path("params.yaml"), reports / "metrics.json", reports / "confusion.json",
             reports / "per_distortion.csv", reports / "per_level.csv", reports / "predictions.csv",
             reports / "type_accuracy.csv"],
        "figures": sorted(figures.glob("*.png")),
        "split": [args.splits.parent / "summary.json"],
        "external": external_files,
    }, test_set=test_set_digest(splits, args.raw))
    print(f"test SRCC {metrics['test']['srcc']:.4f}  baseline SRCC {metrics['baseline']['srcc']:.4f}")
    for name, result in results.items():
        print(f"{name} SRCC {result.metrics['srcc']:.4f} ({result.metrics['images']} images)")


if __name__ == "__main__":
    main()
