"""DVC stage `train`: fit the model on the training shards; keep the best validation epoch."""

import csv
from pathlib import Path

from nriqa.imaging import preprocessing_config
from nriqa.shards import write_json
from nriqa.stage import load_params, stage_main
from nriqa.model import save_model
from nriqa.training import train

SHARDS = Path("data/processed")
MODEL_DIR = Path("models")
HISTORY = Path("reports/train_history.csv")


@stage_main
def main():
    params = load_params()
    preprocessing = preprocessing_config(params)
    model, result = train(SHARDS, params, preprocessing)
    MODEL_DIR.mkdir(exist_ok=True)
    save_model(model, MODEL_DIR / "model.keras")
    write_json(MODEL_DIR / "model.json", {
        "preprocessing": preprocessing,
        "params": {key: params[key] for key in ("data", "preprocess", "model", "train")},
        "best_epoch": result["best_epoch"], "best_val_srcc": result["best_val_srcc"],
        "split_sizes": {"train": result["train_images"], "val": result["val_images"]},
    })
    history = result["history"]
    HISTORY.parent.mkdir(exist_ok=True)
    with HISTORY.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_srcc", "val_rmse"])
        for epoch, row in enumerate(zip(history["loss"], history["val_srcc"], history["val_rmse"])):
            writer.writerow([epoch + 1, *(f"{v:.6f}" for v in row)])


if __name__ == "__main__":
    main()
