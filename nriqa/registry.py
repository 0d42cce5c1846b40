"""The promotion gate: a trained model becomes the champion only by beating the current one.

Every evaluated model is registered as a new version of `mlflow.registered_model`, the losers
too: the registry then lists every candidate with its score, and a version is what one would
compare, serve or promote by hand later. What serving follows is the alias `champion`, and the
gate moves it only when the candidate's test SRCC is strictly higher than the champion's (read
from the champion version's own run); a tie keeps the incumbent, so a re-run of the same model
changes nothing. The alias is set only after the new version exists and is READY, so it never
points at a missing version.

Caveat: the comparison is only meaningful between models evaluated on the same test split;
the candidate's `data.md5` tag and the champion's are both recorded in the report for that
reason.
"""

from __future__ import annotations

import math

from nriqa.errors import NriqaError

ALIAS = "champion"
METRIC = "test_srcc"


def should_promote(candidate_srcc: float, champion_srcc: float | None) -> bool:
    """Strictly better than the champion, or no (scored) champion at all; NaN never wins."""
    if candidate_srcc is None or not math.isfinite(candidate_srcc):
        return False
    if champion_srcc is None or not math.isfinite(champion_srcc):
        return True
    return candidate_srcc > champion_srcc


def _run_data(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).data
    except MlflowException:  # the champion's run was deleted: nothing to defend
        return None


def _run_metric(client, run_id: str, key: str = METRIC) -> float | None:
    data = _run_data(client, run_id)
    return data.metrics.get(key) if data else None


def _run_tag(client, run_id: str, key: str) -> str | None:
    data = _run_data(client, run_id)
    return data.tags.get(key) if data else None


def current_champion(client, name: str):
    """The version the alias points at, or None (no registered model yet, or no alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def register_candidate(client, name: str, run_id: str, model_uri: str):
    """The run's model as a version of `name`; an earlier registration of this run is reused,
    so re-running promote does not pile up copies of one model."""
    import mlflow

    from mlflow.exceptions import MlflowException

    try:
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        existing = []
    if existing:
        return max(existing, key=lambda v: int(v.version))
    # register_model creates the registered model on first use and waits until READY.
    return mlflow.register_model(model_uri, name)


def promote(pointer: dict, name: str) -> dict:
    """Register the pointer's run's model and apply the gate; returns the decision."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(pointer["tracking_uri"])
    client = MlflowClient()
    run_id = pointer["run_id"]
    candidate_srcc = _run_metric(client, run_id)
    if candidate_srcc is None:
        raise NriqaError(f"run {run_id} in {pointer['tracking_uri']} has no {METRIC}: "
                         "run the evaluate stage first.")

    before = current_champion(client, name)
    before_srcc = _run_metric(client, before.run_id) if before else None
    version = register_candidate(client, name, run_id, pointer["model_uri"])
    promoted = (before is None or before.version != version.version) and \
        should_promote(candidate_srcc, before_srcc)
    if promoted:
        client.set_registered_model_alias(name, ALIAS, version.version)
    after = current_champion(client, name)

    report = {
        "registered_model": name,
        "run_id": run_id,
        "candidate_version": int(version.version),
        "candidate_srcc": candidate_srcc,
        "champion_version_before": int(before.version) if before else None,
        "champion_srcc_before": before_srcc,
        "candidate_data_md5": _run_tag(client, run_id, "data.md5"),
        "champion_data_md5_before": _run_tag(client, before.run_id, "data.md5") if before else None,
        "promoted": promoted,
        "champion_version": int(after.version),
        "champion_run_id": after.run_id,
        "model_uri": f"models:/{name}@{ALIAS}",
        "rule": f"promote if {METRIC} > champion's {METRIC} (ties keep the champion)",
    }
    _record(client, report)
    return report


def _record(client, report: dict) -> None:
    """The decision on the candidate's run and version, so the UI shows it without the file."""
    tags = {"promotion.promoted": str(report["promoted"]).lower(),
            "promotion.candidate_version": str(report["candidate_version"]),
            "promotion.champion_version_before": str(report["champion_version_before"]),
            "promotion.champion_srcc_before": str(report["champion_srcc_before"]),
            "promotion.champion_version": str(report["champion_version"])}
    for key, value in tags.items():
        client.set_tag(report["run_id"], key, value)
    name, version = report["registered_model"], str(report["candidate_version"])
    client.set_model_version_tag(name, version, METRIC, str(report["candidate_srcc"]))
    client.set_model_version_tag(name, version, "promoted", tags["promotion.promoted"])
