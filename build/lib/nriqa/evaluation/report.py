"""Evaluation on the content-disjoint test split: the CNN beside a classical baseline.

Test images are decoded from the raw dataset by the same path the service and the CLI use,
so the numbers describe what users get. The BRISQUE + SVR baseline's predictions for the same
test images come from the `baseline` stage (`nriqa.evaluation.baseline.predict_test_split`),
so every run shows what the CNN adds without fitting it again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.core.errors import NriqaError
from nriqa.core.metrics import (
    categorize,
    category_metrics,
    per_group_srcc,
    quality_metrics,
)
from nriqa.core.taxonomy import head_types
from nriqa.model.prediction import score_paths


def score_test_split(model, preprocessing: dict, splits: pd.DataFrame, raw_dir: Path) -> pd.DataFrame:
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    return score_index(model, preprocessing, test, raw_dir, desc="predict test")


def test_set_digest(splits: pd.DataFrame, raw_dir: Path) -> str:
    """What the test split's scores were measured on: each test image's name, MOS and file
    bytes. Equal digests mean the same data and the same split, so SRCCs compare."""
    test = splits[splits["split"] == "test"].sort_values("image")
    digest = hashlib.sha256()
    for image, mos, path in zip(test["image"], test["mos"], test["path"]):
        content = hashlib.md5((raw_dir / path).read_bytes()).hexdigest()
        digest.update(f"{image}\t{float(mos)!r}\t{content}\n".encode())
    return digest.hexdigest()[:16]


def score_index(model, preprocessing: dict, index: pd.DataFrame, raw_dir: Path,
                desc: str = "predict", progress: bool = True) -> pd.DataFrame:
    """A copy of a dataset index (`nriqa.data.formats`: image, path, mos, ...) with a `pred` column,
    and, for models with a type head, `pred_distortion` (the likeliest TID2013 type; 0: no distortion) and
    `pred_top3` (the three likeliest, space-separated).

    The test split and every external dataset go through this one loop, and it through the
    CLI's (`nriqa.model.prediction.score_paths`), so their numbers are comparable. An image
    that cannot be scored stops it with its error. The progress bar counts images on stderr.
    """
    scored = index.reset_index(drop=True).copy()
    results = []
    for result in score_paths(model, preprocessing, [raw_dir / path for path in scored["path"]],
                              names=list(scored["image"]), desc=desc, progress=progress):
        if result.error is not None:
            raise result.error
        results.append(result)
    scored["pred"] = np.array([result.mos for result in results], dtype=np.float32)
    if results and results[0].probabilities is not None:
        probabilities = np.stack([result.probabilities for result in results])
        top3 = np.array(head_types(probabilities.shape[1]))[np.argsort(-probabilities, axis=1)[:, :3]]
        scored["pred_distortion"] = top3[:, 0]
        scored["pred_top3"] = [" ".join(map(str, row)) for row in top3]
    return scored


def distortion_metrics(scored: pd.DataFrame) -> dict:
    """Top-1 and top-3 accuracy of the type head over images with a TID2013 type; {} without."""
    if "pred_distortion" not in scored or not scored["distortion"].between(1, 24).any():
        return {}
    hits = _type_hits(scored)
    return {"distortion_accuracy": float(hits["top1"].mean()),
            "distortion_top3_accuracy": float(hits["top3"].mean())}


def _type_hits(scored: pd.DataFrame) -> pd.DataFrame:
    """The images with a TID2013 type, their type as int, and whether the head's likeliest
    type is it (top1) and its three likeliest hold it (top3)."""
    rows = scored[scored["distortion"].between(1, 24)]
    truth = rows["distortion"].astype(int)
    return rows.assign(distortion=truth, top1=rows["pred_distortion"] == truth,
                       top3=[str(t) in top3.split() for t, top3 in zip(truth, rows["pred_top3"])])


TYPE_ACCURACY_COLUMNS = ["distortion", "level", "images", "top1", "top3"]


def distortion_accuracy_table(scored: pd.DataFrame) -> pd.DataFrame | None:
    """Per (type, level): images, and how often the type head's likeliest type is right (top1)
    and its three likeliest hold it (top3); a row per type with level "all" too. None without
    a type head or types: the likeliest distortions users see are measured here."""
    if "pred_top3" not in scored or not scored["distortion"].between(1, 24).any():
        return None
    rows = _type_hits(scored)
    by_level = rows.groupby(["distortion", "level"])
    by_type = rows.assign(level="all").groupby(["distortion", "level"])
    table = pd.concat([group.agg(images=("top1", "size"), top1=("top1", "mean"),
                                 top3=("top3", "mean")).reset_index()
                       for group in (by_level, by_type)])
    table["level"] = table["level"].astype(str)
    return (table.sort_values(["distortion", "level"]).round(4).reset_index(drop=True)
            [TYPE_ACCURACY_COLUMNS])


def distortion_confusion(scored: pd.DataFrame) -> tuple[list[int], list[list[int]]]:
    """(types, counts[true][predicted]) over the types present, for the confusion plot."""
    rows = scored[scored["distortion"].between(1, 24)]
    types = sorted(set(rows["distortion"].astype(int)) | set(rows["pred_distortion"].astype(int)))
    table = pd.crosstab(rows["distortion"].astype(int), rows["pred_distortion"].astype(int))
    table = table.reindex(index=types, columns=types, fill_value=0)
    return types, table.to_numpy().tolist()


def add_categories(test: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    return test.assign(category=categorize(test["mos"].to_numpy(), thresholds),
                       predicted_category=categorize(test["pred"].to_numpy(), thresholds))


def add_baseline(test: pd.DataFrame, predictions_csv: Path) -> pd.DataFrame:
    """The test split with the baseline stage's predictions (`baseline_pred`) beside its own."""
    baseline = pd.read_csv(predictions_csv)  # pandas reads back the very floats it wrote
    if baseline["image"].astype(str).tolist() != test["image"].astype(str).tolist():
        raise NriqaError(f"{predictions_csv} does not score the test split's images; "
                         "run `dvc repro baseline` after a change to the split")
    return test.assign(baseline_pred=baseline["baseline_pred"].to_numpy())


def summarize(test: pd.DataFrame, thresholds: dict) -> dict:
    """metrics.json: flat, self-describing keys for `dvc metrics show/diff`, in the order
    `dvc exp show` shows them (the evaluate stage keeps it): the test split's figures first,
    `test.srcc` leading, then the baseline's, then per type."""
    metrics = {"test": quality_metrics(test["mos"], test["pred"]),
               "baseline": quality_metrics(test["mos"], test["baseline_pred"])}
    categories = category_metrics(test["mos"], test["pred"], thresholds)
    metrics["test"]["category_accuracy"] = categories["accuracy"]
    metrics["baseline"]["category_accuracy"] = category_metrics(
        test["mos"], test["baseline_pred"], thresholds)["accuracy"]
    metrics["test"]["images"] = int(len(test))
    metrics["test"]["srcc_gain_over_baseline"] = metrics["test"]["srcc"] - metrics["baseline"]["srcc"]
    metrics["test"].update(distortion_metrics(test))
    if test["distortion"].notna().any():
        metrics["test_per_distortion_srcc"] = {
            f"type_{int(k):02d}": v for k, v in per_group_srcc(test, "distortion").items()}
    return metrics, categories["confusion"]


def rounded(metrics, digits: int = 4):
    """metrics.json's figures to `digits` decimals, as reported and logged: the logistic fit's
    PLCC and RMSE move in the sixth decimal between runs of the same model, and the same
    params must give the same metrics.json."""
    if isinstance(metrics, dict):
        return {key: rounded(value, digits) for key, value in metrics.items()}
    return round(metrics, digits) if isinstance(metrics, float) else metrics


def per_distortion_table(test: pd.DataFrame) -> pd.DataFrame:
    cnn = per_group_srcc(test, "distortion")
    baseline = per_group_srcc(test, "distortion", pred_col="baseline_pred")
    return pd.DataFrame({"distortion": [f"{int(k):02d}" for k in cnn],
                         "cnn_srcc": [round(v, 4) for v in cnn.values()],
                         "baseline_srcc": [round(baseline.get(k, 0.0), 4) for k in cnn]})


def per_level_table(test: pd.DataFrame) -> pd.DataFrame:
    return (test.groupby("level")[["mos", "pred", "baseline_pred"]].mean().round(4)
            .reset_index())
