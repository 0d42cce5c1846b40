"""DVC stage `train`: fit the model on the training shards; keep the best validation epoch.

The whole stage is one MLflow run (`nriqa.ops.tracking`): a tracking store that cannot be reached
stops the stage before training, and a crash marks the run FAILED. Once training starts, the
previous outputs are removed; each new one is written aside and renamed, the run pointer last,
so a crash leaves no old pointer beside a new model.

With `train.strategy: multi_worker` every worker runs this stage (the chief through `dvc repro`,
the others as `python -m stages.train`; README: Running as a team). Only the chief opens the
MLflow run and writes the outputs; another worker trains alongside it, saves into a temporary
folder that is then deleted (TensorFlow's pattern for multi-worker saving) and leaves the
project's outputs and the tracking store alone.
"""

import csv
import tempfile
from pathlib import Path

from nriqa.ops import tracking
from nriqa.model.imaging import preprocessing_config
from nriqa.model.network import save_model
from nriqa.stage import load_params, remove_stale, stage_main, write_json, written_aside
from nriqa.model.training import check_strategy, is_chief, train

SHARDS = Path("data/processed")
MODEL_DIR = Path("models")
HISTORY = Path("reports/train_history.csv")
POINTER = MODEL_DIR / "mlflow_run.json"


@stage_main
def main():
    params = load_params()
    preprocessing = preprocessing_config(params)
    check_strategy(params["train"].get("strategy", "none"))  # before a run is opened
    if not is_chief(params):
        with tempfile.TemporaryDirectory(prefix="nriqa-worker-") as scratch:
            model, result = train(SHARDS, params, preprocessing)
            save_outputs(model, params, preprocessing, result, Path(scratch) / "models",
                         Path(scratch) / "train_history.csv")
        print("worker: trained; outputs are the chief's to write")
        return
    with tracking.training_run(params, SHARDS) as run:
        remove_stale(POINTER, MODEL_DIR / "model.keras", MODEL_DIR / "model.json", HISTORY)
        model, result = train(SHARDS, params, preprocessing, extra_callbacks=[run.epoch_logger()])
        save_outputs(model, params, preprocessing, result)
        run.log_summary(result)
        run.log_model(model, MODEL_DIR, tracking.example_crops(SHARDS, preprocessing))
        run.write_pointer(POINTER)


def save_outputs(model, params, preprocessing, result, model_dir=MODEL_DIR, history_csv=HISTORY):
    with written_aside(model_dir / "model.keras") as aside:
        save_model(model, aside)
    write_json(model_dir / "model.json", {
        "preprocessing": preprocessing,
        "params": {key: params[key] for key in ("data", "preprocess", "model", "train")},
        "best_epoch": result["best_epoch"], "best_val_srcc": result["best_val_srcc"],
        "split_sizes": {"train": result["train_images"], "val": result["val_images"]},
    })
    history = result["history"]
    with written_aside(history_csv) as aside, aside.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_srcc", "val_rmse"])
        for epoch, row in enumerate(zip(history["loss"], history["val_srcc"], history["val_rmse"])):
            writer.writerow([epoch + 1, *(f"{v:.6f}" for v in row)])


if __name__ == "__main__":
    main()
