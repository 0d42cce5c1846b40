"""Where a training came from: the code's git state and the digest of the data it read,
recorded as tags and as the MLflow dataset input of the training run (`nriqa.ops.tracking`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from nriqa.core.config import DataConfig

_CHUNK = 1 << 20


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state() -> dict:
    """The commit, and whether the code and params differ from it.

    dvc.lock is left out: DVC itself rewrites it during every `dvc repro`, before the later
    stages run, so counting it would call every reproduction dirty.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock")
    return {"git.commit": commit or "unknown",
            "git.dirty": "unknown" if status is None else str(bool(status)).lower()}


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """The md5 of a folder's content, computed as DVC 3 hashes a directory output (the md5 of
    the sorted JSON list of each file's relative path and md5), so it equals the hash dvc.lock
    records for the folder, without reading dvc.lock."""
    folder = Path(folder)
    entries = sorted(({"md5": _file_md5(path), "relpath": path.relative_to(folder).as_posix()}
                      for path in folder.rglob("*") if path.is_file()),
                     key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def provenance_tags(data: DataConfig, data_digest: str) -> dict:
    tags = {**git_state(), "data.source": data.source, "data.md5": data_digest}
    # Set by DVC for `dvc exp run` only; a plain `dvc repro` has no experiment name.
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def log_dataset(data: DataConfig, shard_dir: Path, digest: str) -> None:
    """Record the dataset as an MLflow input: its split table, source and digest."""
    import mlflow
    import pandas as pd
    from mlflow.data.sources import LocalArtifactDatasetSource

    splits = pd.read_csv(shard_dir / "splits.csv")
    # The table's schema is what MLflow records of it: integer columns (distortion, type_label)
    # as doubles, as MLflow asks of integer columns, rather than its hint on every run.
    splits = splits.astype({column: "float64"
                            for column in splits.select_dtypes("integer").columns})
    source = data.source
    where = str(data.path or data.url or source)
    # A URL (http, s3, ...) resolves to one kind of source; a local path or name would resolve
    # to two equal ones (MLflow's `file` and plain-path sources) and warn, so it is given as one.
    if urlparse(where).scheme in ("", "file"):
        where = LocalArtifactDatasetSource(where)
    dataset = mlflow.data.from_pandas(splits, source=where, targets="mos",
                                      name=f"{source}-{shard_dir.as_posix()}", digest=digest)
    mlflow.log_input(dataset, context="training")
