"""Evaluation on the content-disjoint test split: the CNN beside a classical baseline.

Test images are decoded from the raw dataset by the same path the service and the CLI use,
so the numbers describe what users get. The BRISQUE + SVR baseline is trained on the same
training split and scored on the same test images, so every run shows what the CNN adds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nriqa.baseline import BrisqueSVR, features_for_paths
from nriqa.imaging import decode_image
from nriqa.metrics import categorize, category_metrics, per_group_srcc, quality_metrics
from nriqa.predict import predict_mos


def score_test_split(model, preprocessing: dict, splits: pd.DataFrame, raw_dir: Path,
                     batch_images: int = 16) -> pd.DataFrame:
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    preds = []
    for start in tqdm(range(0, len(test), batch_images), desc="predict test", unit="batch"):
        rows = test.iloc[start:start + batch_images]
        images = [decode_image(raw_dir / p, name=n) for p, n in zip(rows["path"], rows["image"])]
        preds.append(predict_mos(model, images, preprocessing))
    test["pred"] = np.concatenate(preds) if preds else []
    return test


def add_categories(test: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    return test.assign(category=categorize(test["mos"].to_numpy(), thresholds),
                       predicted_category=categorize(test["pred"].to_numpy(), thresholds))


def add_baseline(test: pd.DataFrame, splits: pd.DataFrame, raw_dir: Path) -> pd.DataFrame:
    train = splits[splits["split"] == "train"]
    baseline = BrisqueSVR().fit(features_for_paths([raw_dir / p for p in train["path"]]),
                                train["mos"].to_numpy())
    test = test.copy()
    test["baseline_pred"] = baseline.predict(features_for_paths([raw_dir / p for p in test["path"]]))
    return test


def summarize(test: pd.DataFrame, thresholds: dict) -> dict:
    """metrics.json: flat, self-describing keys for `dvc metrics show/diff`."""
    metrics = {"test": quality_metrics(test["mos"], test["pred"]),
               "baseline": quality_metrics(test["mos"], test["baseline_pred"])}
    categories = category_metrics(test["mos"], test["pred"], thresholds)
    metrics["test"]["category_accuracy"] = categories["accuracy"]
    metrics["baseline"]["category_accuracy"] = category_metrics(
        test["mos"], test["baseline_pred"], thresholds)["accuracy"]
    metrics["test"]["images"] = int(len(test))
    metrics["test"]["srcc_gain_over_baseline"] = metrics["test"]["srcc"] - metrics["baseline"]["srcc"]
    if test["distortion"].notna().any():
        metrics["test_per_distortion_srcc"] = {
            f"type_{int(k):02d}": v for k, v in per_group_srcc(test, "distortion").items()}
    return metrics, categories["confusion"]


def per_distortion_table(test: pd.DataFrame) -> pd.DataFrame:
    cnn = per_group_srcc(test, "distortion")
    baseline = per_group_srcc(test, "distortion", pred_col="baseline_pred")
    return pd.DataFrame({"distortion": [f"{int(k):02d}" for k in cnn],
                         "cnn_srcc": [round(v, 4) for v in cnn.values()],
                         "baseline_srcc": [round(baseline.get(k, 0.0), 4) for k in cnn]})


def per_level_table(test: pd.DataFrame) -> pd.DataFrame:
    return (test.groupby("level")[["mos", "pred", "baseline_pred"]].mean().round(4)
            .reset_index())
