"""The promotion gate: a trained model becomes the champion only by beating the current one.

Every evaluated model is registered as a new version of `mlflow.registered_model`, the losers
too: the registry then lists every candidate with its score, and a version is what one would
compare, serve or promote by hand later. What serving follows is the alias `champion`, and the
gate moves it only when the candidate's test SRCC is strictly higher than the champion's (read
from the champion version's own run); a tie keeps the incumbent, so a re-run of the same model
changes nothing.

The gate fails closed:
* Scores are compared only between models measured on the same test set: the evaluate stage
  tags each run with `test_set.digest` (`nriqa.evaluation.report.test_set_digest`). A candidate
  measured on another test set is registered but not promoted, unless `mlflow.force_promote`
  is true (recorded on the run and in the report).
* An error while reading the champion (an unreachable server, a locked database, a deleted
  run) stops the stage before anything is registered; only "no such registered model" and
  "no champion alias" mean there is no champion.
* Read, compare and set run under a lock held in the registry itself, so two promotions at
  once (queued experiments, or machines sharing a server) cannot both read the old champion
  and let the last writer win: the lock is a registered model `<name>-promotion-lock`, which
  only one process can create. It exists only while a promotion runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time

from nriqa.core.errors import NriqaError

ALIAS = "champion"
METRIC = "test_srcc"
TEST_SET_TAG = "test_set.digest"
LOCK_SUFFIX = "-promotion-lock"
# How long a promotion waits for another's lock. Promotions take seconds, so a lock held this
# long was left by a crashed one.
LOCK_WAIT_S = 300.0


def should_promote(candidate_srcc: float, champion_srcc: float | None) -> bool:
    """Strictly better than the champion, or no (scored) champion at all; NaN never wins."""
    if candidate_srcc is None or not math.isfinite(candidate_srcc):
        return False
    if champion_srcc is None or not math.isfinite(champion_srcc):
        return True
    return candidate_srcc > champion_srcc


def decide(candidate: dict, champion: dict | None, force: bool = False) -> tuple[bool, str]:
    """(promote?, why) for `{"srcc", "test_set"}` of the candidate and of the champion."""
    srcc = candidate["srcc"]
    if srcc is None or not math.isfinite(srcc):
        return False, f"the candidate's {METRIC} is not a number"
    if force:
        return True, "forced by mlflow.force_promote"
    if champion is None:
        return True, "there was no champion"
    if champion["test_set"] != candidate["test_set"]:
        return False, (f"measured on another test set than the champion (test_set.digest "
                       f"{candidate['test_set']} vs {champion['test_set']}), so the scores are not "
                       "comparable; set mlflow.force_promote: true to promote it anyway")
    if should_promote(srcc, champion["srcc"]):
        return True, f"{METRIC} {srcc:.4f} beats the champion's {champion['srcc']:.4f}"
    return False, f"{METRIC} {srcc:.4f} does not beat the champion's {champion['srcc']:.4f}"


def _unreadable(what: str, error: Exception) -> NriqaError:
    detail = getattr(error, "message", None) or str(error)
    return NriqaError(f"cannot read {what} ({type(error).__name__}: {detail}); stopping without "
                      f"registering anything, the alias {ALIAS!r} is unchanged")


def _error_code(error: Exception) -> str | None:
    return getattr(error, "error_code", None)


def evaluation(client, run_id: str, what: str) -> dict:
    """`{"srcc", "test_set"}` of a run; any error reading it stops the stage."""
    try:
        run = client.get_run(run_id)
    except Exception as error:  # noqa: BLE001  every failure here must stop the gate
        raise _unreadable(f"{what} run {run_id}", error) from error
    if run.info.lifecycle_stage == "deleted":  # get_run still returns a soft-deleted run
        raise NriqaError(f"{what} run {run_id} is deleted; stopping without registering anything, "
                         f"the alias {ALIAS!r} is unchanged. If that was on purpose, remove the "
                         "alias (docs/tracking.md) and run again")
    return {"srcc": run.data.metrics.get(METRIC), "test_set": run.data.tags.get(TEST_SET_TAG)}


def current_champion(client, name: str):
    """The version the alias points at; None only when the registered model or the alias does
    not exist. Any other error is raised as NriqaError."""
    try:
        registered = client.get_registered_model(name)
    except Exception as error:  # noqa: BLE001
        if _error_code(error) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise _unreadable(f"the registered model {name!r}", error) from error
    version = registered.aliases.get(ALIAS)
    if version is None:
        return None
    try:
        return client.get_model_version(name, str(version))
    except Exception as error:  # noqa: BLE001
        raise _unreadable(f"the champion {name} v{version}", error) from error


@contextlib.contextmanager
def promotion_lock(client, name: str, wait_s: float = LOCK_WAIT_S, poll_s: float = 0.5):
    """Hold `<name>-promotion-lock` while the block runs; wait up to `wait_s` for it."""
    lock = f"{name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()} pid {os.getpid()} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, description=f"promotion of {name} by {holder}")
            break
        except Exception as error:  # noqa: BLE001
            if _error_code(error) != "RESOURCE_ALREADY_EXISTS":
                raise NriqaError(f"cannot take the promotion lock {lock!r} ({error}); the alias "
                                 f"{ALIAS!r} is unchanged") from error
        if time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                holder = client.get_registered_model(lock).description
            raise NriqaError(f"another promotion holds the lock {lock!r} ({holder}) for over "
                             f"{wait_s:.0f} s. If none is running, a crashed one left it: delete "
                             f"the registered model {lock!r} and run again.")
        time.sleep(poll_s)
    try:
        yield
    except BaseException:
        _release(client, lock, failing=True)
        raise
    _release(client, lock)


def _release(client, lock: str, failing: bool = False) -> None:
    """Delete the lock; if that fails, say so, without hiding the error that is on its way."""
    try:
        client.delete_registered_model(lock)
    except Exception as error:  # noqa: BLE001
        message = (f"the promotion lock {lock!r} is left in place ({error}); delete that "
                   "registered model before the next promotion")
        if not failing:
            raise NriqaError(message) from error
        print(f"warning: {message}", file=sys.stderr)


def register_candidate(client, name: str, run_id: str, model_uri: str):
    """The run's model as a version of `name`; an earlier registration of this run is reused,
    so re-running promote does not pile up copies of one model."""
    import mlflow

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return max(existing, key=lambda v: int(v.version))
    # register_model creates the registered model on first use and waits until READY.
    return mlflow.register_model(model_uri, name)


def version_uri(name: str, version) -> str:
    """The exact registered version, which later alias moves cannot change."""
    return f"models:/{name}/{version}"


def promote(pointer: dict, name: str, candidate_srcc: float, force: bool = False,
            card: str | None = None) -> dict:
    """Register the pointer's run's model and apply the gate; returns the decision.

    `candidate_srcc` is the candidate's test SRCC as its evaluation reported it; the test set
    it was measured on is the run's `test_set.digest` tag, set by that same evaluation.
    `card`, the candidate's model card (`nriqa.ops.model_card`), becomes its version's
    description, and the registered model's when it is the champion (`describe`).
    """
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(pointer["tracking_uri"])
    try:
        client = MlflowClient()
    except Exception as error:  # noqa: BLE001  a store that cannot be opened stops the gate
        raise _unreadable(f"the tracking store {pointer['tracking_uri']}", error) from error
    run_id = pointer["run_id"]
    candidate = {**evaluation(client, run_id, "the candidate's"), "srcc": candidate_srcc}
    if candidate["test_set"] is None:
        raise NriqaError(f"run {run_id} in {pointer['tracking_uri']} has no {TEST_SET_TAG}: "
                         "run the evaluate stage first.")

    with promotion_lock(client, name):
        before = current_champion(client, name)
        champion = evaluation(client, before.run_id, "the champion's") if before else None
        try:
            version = register_candidate(client, name, run_id, pointer["model_uri"])
        except Exception as error:  # noqa: BLE001  e.g. a locked database: stop, alias untouched
            raise NriqaError(f"cannot register run {run_id}'s model as {name!r} "
                             f"({type(error).__name__}: {error}); the alias {ALIAS!r} is "
                             "unchanged") from error
        if before is not None and str(before.version) == str(version.version):
            promoted, reason = False, "it is the champion already"
        else:
            promoted, reason = decide(candidate, champion, force)
        if promoted:
            try:
                client.set_registered_model_alias(name, ALIAS, version.version)
            except Exception as error:  # noqa: BLE001  a failed move leaves the old champion
                raise NriqaError(f"cannot move the alias {ALIAS!r} to {name} v{version.version} "
                                 f"({type(error).__name__}: {error}); the alias is unchanged") from error
        after = current_champion(client, name)
        if card is not None:  # under the lock, so no other promotion's alias move comes between
            try:
                describe(client, name, version.version, card,
                         champion=after is not None and str(after.version) == str(version.version))
            except Exception as error:  # noqa: BLE001
                raise NriqaError(f"cannot write the model card of {name} v{version.version} "
                                 f"({type(error).__name__}: {error}); the alias {ALIAS!r} names "
                                 f"v{after.version}: run promote again to record it") from error

    report = {
        "registered_model": name,
        "tracking_uri": pointer["tracking_uri"],  # without credentials (`tracking.take_credentials`)
        "run_id": run_id,
        "candidate_version": int(version.version),
        "candidate_srcc": candidate["srcc"],
        "candidate_test_set": candidate["test_set"],
        "champion_version_before": int(before.version) if before else None,
        "champion_srcc_before": champion["srcc"] if champion else None,
        "champion_test_set_before": champion["test_set"] if champion else None,
        "forced": bool(force),
        "promoted": promoted,
        "reason": reason,
        "champion_version": int(after.version),
        "champion_run_id": after.run_id,
        "model_uri": version_uri(name, after.version),
        "rule": f"promote if {METRIC} > champion's {METRIC} on the same test set "
                "(ties keep the champion), or if forced",
    }
    _record(client, report)
    return report


def describe(client, name: str, version, card: str, champion: bool) -> None:
    """The card as the version's description, whether it won or not; as the registered model's
    only when this version is the champion (just promoted, or already), so the registered
    model always describes the version that `champion` names."""
    client.update_model_version(name, str(version), description=card)
    if champion:
        client.update_registered_model(
            name, description=f"Champion: version {version} (alias `{ALIAS}`); every version "
                              f"carries its own card.\n\n{card}")


def _record(client, report: dict) -> None:
    """The decision on the candidate's run and version, so the UI shows it without the file."""
    tags = {"promotion.promoted": str(report["promoted"]).lower(),
            "promotion.forced": str(report["forced"]).lower(),
            "promotion.reason": report["reason"],
            "promotion.candidate_version": str(report["candidate_version"]),
            "promotion.champion_version_before": str(report["champion_version_before"]),
            "promotion.champion_srcc_before": str(report["champion_srcc_before"]),
            "promotion.champion_version": str(report["champion_version"])}
    for key, value in tags.items():
        client.set_tag(report["run_id"], key, value)
    name, version = report["registered_model"], str(report["candidate_version"])
    client.set_model_version_tag(name, version, METRIC, str(report["candidate_srcc"]))
    client.set_model_version_tag(name, version, TEST_SET_TAG, report["candidate_test_set"])
    client.set_model_version_tag(name, version, "promoted", tags["promotion.promoted"])
