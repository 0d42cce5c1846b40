"""Helpers of the pyfunc and Spark tests (test_pyfunc, test_spark): a registry holding a tiny
champion, a folder of pictures with a corrupt file among them, and the CLI's rows for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.service_helpers import read_jsonl, score_cli, textured

CORRUPT = "corrupt.png"


def register_champion(model_dir: Path, store: Path, name: str = "nriqa") -> str:
    """Log the bundle in `model_dir` as the train stage does, into a new sqlite store under
    `store`, register it as `name` version 1 and give it the alias `champion`; returns the
    store's tracking URI."""
    import mlflow

    from nriqa.core.categories import DEFAULT_THRESHOLDS
    from nriqa.core.imaging import crops_for_prediction, decode_image
    from nriqa.model.bundle import load_model
    from nriqa.model.pyfunc import log_bundle

    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("batch", artifact_location=(store / "artifacts").as_uri())
    mlflow.set_experiment("batch")
    model, info = load_model(model_dir)
    picture = store / "example.png"
    textured(1).save(picture)
    example = crops_for_prediction(decode_image(picture), info["preprocessing"])
    with mlflow.start_run():
        model_uri = log_bundle(model_dir, example, model, categories=DEFAULT_THRESHOLDS)
    version = mlflow.register_model(model_uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)
    return uri


def write_pictures(folder: Path, count: int, size=(96, 64)) -> list[Path]:
    """`count` different PNG and JPEG pictures, then one corrupt file (a PNG cut short)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"picture-{seed:04d}.{'png' if seed % 2 else 'jpg'}"
        textured(seed, size).save(path)
        paths.append(path)
    corrupt = folder / CORRUPT
    corrupt.write_bytes(paths[1].read_bytes()[:200])
    return paths + [corrupt]


def cli_rows(model_dir: Path, folder: Path, out: Path) -> dict[str, dict]:
    """The single-process CLI's rows for a folder, by path (the corrupt file has none)."""
    score_cli([str(folder), "--model-dir", str(model_dir), "--format", "jsonl", "-o", str(out)],
              check=False)
    return {row["path"]: row for row in read_jsonl(out)}


def same_scores(row: dict, expected: dict, atol: float = 1e-4) -> None:
    """A batch row scores as the CLI's row: MOS within `atol`, the same category and the same
    distortions (types and probabilities) or note."""
    assert abs(row["mos"] - expected["mos"]) <= atol, (row, expected)
    assert row["category"] == expected["category"], (row, expected)
    assert row["distortion_note"] == expected["distortion_note"], (row, expected)
    mine = [(d["type"], d["name"]) for d in (_list(row["distortions"]))]
    theirs = [(d["type"], d["name"]) for d in expected["distortions"] or []]
    assert mine == theirs, (row, expected)
    for a, b in zip(_list(row["distortions"]), expected["distortions"] or []):
        assert abs(a["probability"] - b["probability"]) <= 1e-3


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return json.loads(value)
    return [dict(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
