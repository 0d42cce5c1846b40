"""`python -m nriqa runs` (parsed in `nriqa.cli`): the experiment's MLflow runs, best test SRCC first."""

from __future__ import annotations

import os
from pathlib import Path

from nriqa.core.config import load_config
from nriqa.core.errors import NriqaError
from nriqa.ops.tracking import check_reachable, resolve_tracking_uri


def runs_table(params_path: str | Path = "params.yaml", experiment: str | None = None,
               max_results: int = 10) -> str:
    import mlflow

    path = Path(params_path)
    if path.exists():
        settings = load_config(path).mlflow
        configured, default_experiment = settings.tracking_uri, settings.experiment
    else:  # outside a project: MLFLOW_TRACKING_URI, else MLflow's local store here
        configured, default_experiment = "sqlite:///mlflow.db", "nriqa"
    uri = resolve_tracking_uri(configured, Path.cwd())
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or default_experiment
    if mlflow.get_experiment_by_name(name) is None:
        raise NriqaError(f"no MLflow experiment {name!r} in {uri}: train a model first.")
    runs = mlflow.search_runs(experiment_names=[name], order_by=["metrics.test_srcc DESC"],
                              max_results=max_results)
    if runs.empty:
        return f"no runs in experiment {name!r} ({uri})"
    return format_runs(runs)


def format_runs(runs) -> str:
    """The table: id, name, status, scores, then only the params whose values differ."""
    import pandas as pd

    table = pd.DataFrame({"run": runs["run_id"].str[:8],
                          "name": runs.get("tags.mlflow.runName", pd.Series("", index=runs.index)),
                          "status": runs["status"],
                          "started": runs["start_time"].dt.strftime("%Y-%m-%dT%H:%M")})
    for metric in ("test_srcc", "baseline_srcc"):
        column = runs.get(f"metrics.{metric}")
        table[metric] = column.round(4) if column is not None else float("nan")
    params = [c for c in runs.columns if c.startswith("params.")]
    differing = [c for c in params if runs[c].astype(str).nunique() > 1]
    for column in sorted(differing):
        table[column.removeprefix("params.")] = runs[column]
    note = "\n(all runs share the same params)" if len(runs) > 1 and not differing else ""
    return table.to_string(index=False, na_rep="-") + note
