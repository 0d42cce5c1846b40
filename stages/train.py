"""DVC stage `train`: fit the model on the training shards; keep the best validation epoch.

    python -m stages.train SHARD_DIR MODEL_DIR HISTORY_CSV

MODEL_DIR receives the model bundle (`nriqa.model.bundle`: model.keras + model.json) and
mlflow_run.json, the pointer to the MLflow run. The whole stage is one MLflow run
(`nriqa.ops.tracking`): a tracking store that cannot be reached stops the stage before
training, and a crash marks the run FAILED. Once training starts, the previous outputs are
removed; each new one is written aside and renamed, the run pointer last, so a crash leaves no
old pointer beside a new model.

With `train.strategy: multi_worker` every worker runs this stage (the chief through `dvc repro`,
the others as `python -m stages.train ...` with the same arguments; docs/team.md).
Only the chief opens the MLflow run and writes the outputs; another worker trains alongside it,
saves into a temporary folder that is then deleted (TensorFlow's pattern for multi-worker
saving) and leaves the project's outputs and the tracking store alone.
"""

import argparse
import csv
import tempfile
from pathlib import Path

from nriqa.core.config import load_config
from nriqa.core.imaging import preprocessing_config
from nriqa.core.stage import remove_stale, stage_main, written_aside
from nriqa.data.formats import MOS_SCALES, dataset_format
from nriqa.data.shards import example_crops
from nriqa.model.bundle import INFO, WEIGHTS, save_bundle
from nriqa.model.distribution import check_strategy, is_chief
from nriqa.model.pyfunc import log_bundle
from nriqa.model.training import train
from nriqa.ops import tracking

POINTER = "mlflow_run.json"


@stage_main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard_dir", type=Path, help="the training shards (data/processed)")
    parser.add_argument("model_dir", type=Path, help="the model bundle and run pointer (models)")
    parser.add_argument("history", type=Path, help="per-epoch loss and validation scores "
                                                   "(reports/train_history.csv)")
    args = parser.parse_args()
    # Every param, because the MLflow run records them all; the training reads `model`,
    # `train` and `predict`, and model.json records the preprocessing and the label scale.
    config = load_config()
    preprocessing = preprocessing_config(config)
    check_strategy(config.train.strategy)  # before a run is opened
    if not is_chief(config.train.strategy):
        with tempfile.TemporaryDirectory(prefix="nriqa-worker-") as scratch:
            model, result = train(args.shard_dir, config.model, config.train, preprocessing)
            save_outputs(model, config, preprocessing, result, Path(scratch) / "models",
                         Path(scratch) / "train_history.csv")
        print("worker: trained; outputs are the chief's to write")
        return
    with tracking.training_run(config, args.shard_dir) as run:
        remove_stale(args.model_dir / POINTER, args.model_dir / WEIGHTS, args.model_dir / INFO,
                     args.history)
        model, result = train(args.shard_dir, config.model, config.train, preprocessing,
                              extra_callbacks=[run.epoch_logger()])
        save_outputs(model, config, preprocessing, result, args.model_dir, args.history)
        run.log_summary(result)
        model_uri = log_bundle(args.model_dir, example_crops(args.shard_dir, preprocessing), model,
                               categories=config.evaluate.categories)
        run.write_pointer(args.model_dir / POINTER, model_uri)


def save_outputs(model, config, preprocessing, result, model_dir, history_csv):
    save_bundle(model, model_dir, {
        "preprocessing": preprocessing,
        "mos_range": list(MOS_SCALES[dataset_format(config.data)]),
        "params": {key: config.as_dict()[key] for key in ("data", "preprocess", "model", "train")},
        "best_epoch": result["best_epoch"], "best_val_srcc": result["best_val_srcc"],
        "averaged_val_srcc": result.get("averaged_val_srcc"),  # null: not averaged
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
