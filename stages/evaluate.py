"""DVC stage `evaluate`: test-split metrics, the baseline beside them, tables and plots, and the
same model measured on each labelled folder of `evaluate.external` (see nriqa/evaluation/external.py).

Results are also added to the training's MLflow run, named by models/mlflow_run.json.
"""

from pathlib import Path

import pandas as pd

from nriqa.evaluation import external, plots
from nriqa.ops import tracking
from nriqa.evaluation.report import (add_baseline, add_categories, distortion_confusion,
                              per_distortion_table, per_level_table, rounded, score_test_split,
                              summarize, test_set_digest)
from nriqa.evaluation.metrics import CATEGORY_NAMES
from nriqa.model.bundle import load_model
from nriqa.stage import load_params, stage_main, write_json

RAW_DIR = Path("data/raw")
SPLITS = Path("data/processed/splits.csv")
REPORTS = Path("reports")


@stage_main
def main():
    params = load_params()
    # Checked first: an unreachable tracking server should not cost a whole evaluation.
    run = tracking.open_pointer(Path("models/mlflow_run.json"))
    # So are the external folders: a mistyped path must not wait for the test split.
    # Relative paths are the project's, also under `dvc exp run --temp` (which runs in a copy).
    folders = external.open_folders(params["evaluate"].get("external"), tracking.project_root())
    thresholds = params["evaluate"]["categories"]
    model, info = load_model("models")
    splits = pd.read_csv(SPLITS)
    test = score_test_split(model, info["preprocessing"], splits, RAW_DIR)
    test = add_categories(add_baseline(test, splits), thresholds)
    metrics, confusion = summarize(test, thresholds)
    results = {folder.name: external.evaluate_folder(model, info["preprocessing"], folder)
               for folder in folders}
    if results:
        metrics["external"] = {name: result.metrics for name, result in results.items()}
    metrics = rounded(metrics)

    REPORTS.mkdir(exist_ok=True)
    write_json(REPORTS / "metrics.json", metrics)
    write_json(REPORTS / "confusion.json", {"labels": CATEGORY_NAMES, "matrix": confusion})
    columns = ["image", "reference", "distortion", "level", "mos", "pred", "baseline_pred",
               "category", "predicted_category", "pred_distortion", "pred_top3"]
    test.reindex(columns=columns).round(4).to_csv(REPORTS / "predictions.csv", index=False)
    per_distortion = per_distortion_table(test)
    per_distortion.to_csv(REPORTS / "per_distortion.csv", index=False)
    per_level_table(test).to_csv(REPORTS / "per_level.csv", index=False)
    external.reset_dir(REPORTS / "external")  # a declared output, so it exists even when empty
    external_files = [path for name, result in results.items()
                      for path in external.write_reports(name, result, REPORTS / "external")]

    figures = REPORTS / "figures"
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
    history = pd.read_csv(REPORTS / "train_history.csv")
    plots.training_curves_plot({c: history[c].tolist() for c in ("loss", "val_srcc")},
                               figures / "training_curves.png")
    tracking.log_evaluation(run, metrics, {
        "": [Path("params.yaml"), REPORTS / "metrics.json", REPORTS / "confusion.json",
             REPORTS / "per_distortion.csv", REPORTS / "per_level.csv", REPORTS / "predictions.csv"],
        "figures": sorted(figures.glob("*.png")),
        "split": [Path("data/processed/summary.json")],
        "external": external_files,
    }, test_set=test_set_digest(splits, RAW_DIR))
    print(f"test SRCC {metrics['test']['srcc']:.4f}  baseline SRCC {metrics['baseline']['srcc']:.4f}")
    for name, result in results.items():
        print(f"{name} SRCC {result.metrics['srcc']:.4f} ({result.metrics['images']} images)")


if __name__ == "__main__":
    main()
