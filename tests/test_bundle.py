"""The model bundle (nriqa.model.bundle): saved byte-identically, checked on the way in, and
carried byte for byte through MLflow (into the BentoML model store: test_service.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from nriqa.core.errors import NriqaError
from nriqa.model import bundle
from nriqa.model.network import make_model
from nriqa.model.prediction import predict_mos
from nriqa.model.pyfunc import log_bundle
from tests.helpers import PROJECT, model_config

PREPROCESSING = {"mode": "native", "resize": [32, 32], "crop_size": 32, "stride": 32,
                 "max_crops": 6}
INFO = {"preprocessing": PREPROCESSING, "mos_range": [0.0, 9.0]}


@pytest.fixture(scope="module")
def tiny_model():
    return make_model(model_config(input_size=32, width=0.25, depth=2, head_units=(8,), distortion_types=3), initial_mos=4.0)


@pytest.fixture()
def saved(tiny_model, tmp_path):
    return bundle.save_bundle(tiny_model, tmp_path / "bundle", INFO)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_saved_bundle_loads_with_what_scoring_needs(tiny_model, saved):
    loaded = bundle.load_bundle(saved)
    assert loaded.preprocessing == PREPROCESSING
    assert loaded.mos_range == (0.0, 9.0)
    assert loaded.distortion_types == ["additive Gaussian noise",
                                       "additive noise in colour components",
                                       "spatially correlated noise"]
    image = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    assert np.allclose(predict_mos(loaded.model, [image], loaded.preprocessing),
                       predict_mos(tiny_model, [image], PREPROCESSING), atol=1e-5)
    model, info = bundle.load_model(saved)
    assert info == json.loads((saved / "model.json").read_text())


def test_saving_twice_in_two_places_gives_identical_bytes(tiny_model, tmp_path):
    first = bundle.save_bundle(tiny_model, tmp_path / "a", INFO)
    time.sleep(1.1)  # a different save time must not change the bytes
    second = bundle.save_bundle(tiny_model, tmp_path / "elsewhere" / "b", INFO)
    for name in bundle.FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


SAVE = """
import sys, keras
keras.utils.set_random_seed(5)
from nriqa.model.network import make_model
from nriqa.model.bundle import save_weights
from tests.helpers import model_config
save_weights(make_model(model_config()), sys.argv[1])
"""


@pytest.mark.integration  # starts a Python process
def test_two_processes_save_identical_bytes(tmp_path):
    """Keras names shared objects by memory address, which each process places elsewhere."""
    for name in ("a.keras", "b.keras"):
        subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / name)], cwd=PROJECT,
                       check=True, capture_output=True)
    assert sha(tmp_path / "a.keras") == sha(tmp_path / "b.keras")


@pytest.mark.parametrize("breakage, words", [
    (lambda folder: (folder / "model.json").unlink(), "model.json missing"),
    (lambda folder: (folder / "model.keras").unlink(), "model.keras missing"),
    (lambda folder: (folder / "model.json").write_text("{not json"), "model.json: not valid JSON"),
    (lambda folder: (folder / "model.json").write_text("{}"), "has no `preprocessing` section"),
    (lambda folder: (folder / "model.json").write_text(json.dumps(
        {**INFO, "preprocessing": {"mode": "native"}, "distortion_types": []})),
     "preprocessing lacks resize, crop_size, stride, max_crops"),
    (lambda folder: (folder / "model.json").write_text(json.dumps(
        {**INFO, "mos_range": [9, 0], "distortion_types": []})), "mos_range must be"),
    (lambda folder: (folder / "model.json").write_text(json.dumps(
        {**INFO, "distortion_types": ["one"]})), "distortion_types names 1 types, but the model has 3"),
    (lambda folder: (folder / "model.json").write_text(json.dumps(
        {"preprocessing": PREPROCESSING})), "written by an older nriqa"),
    (lambda folder: (folder / "model.keras").write_bytes(b"not a zip"),
     "model.keras: corrupt or truncated"),
    (lambda folder: (folder / "model.keras").write_bytes(
        (folder / "model.keras").read_bytes()[:5000]), "model.keras: corrupt or truncated"),
])
def test_a_broken_bundle_names_the_file_and_field(saved, breakage, words):
    breakage(saved)
    with pytest.raises(NriqaError, match=words.replace("(", r"\(")) as raised:
        bundle.load_bundle(saved)
    assert str(saved) in str(raised.value)


def test_mlflow_round_trip_returns_the_same_bytes(tiny_model, saved, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("bundle", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("bundle")
    example = np.zeros((1, 32, 32, 3), np.float32)
    with mlflow.start_run():
        model_uri = log_bundle(saved, example, tiny_model)
    fetched = bundle.fetch_bundle(model_uri, tmp_path / "fetched", tracking_uri=uri)
    for name in bundle.FILES:
        assert sha(fetched / name) == sha(saved / name), name
    # Still a keras-flavor model that MLflow itself loads, its custom layer from code/.
    logged = mlflow.keras.load_model(model_uri)
    np.testing.assert_allclose(np.asarray(logged(example)), np.asarray(tiny_model(example)),
                               atol=1e-6)


def test_fetching_what_is_not_a_bundle_says_so(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("other", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("other")

    class Identity(mlflow.pyfunc.PythonModel):
        # A type hint, or MLflow warns that it wants one; an ndarray's infers no signature.
        def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
            return model_input

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Identity(),
                                       pip_requirements=["mlflow"])
    with pytest.raises(NriqaError, match="has no data/model.keras: not a model logged by nriqa"):
        bundle.fetch_bundle(info.model_uri, tmp_path / "fetched", tracking_uri=uri)



# --- The champion packaging downloads is the one promote recorded ------------------------------

@pytest.fixture
def two_logged_runs(tiny_model, saved, tmp_path):
    """Two runs, each with the bundle logged, both versions of one registered model."""
    import mlflow

    from nriqa.ops.packaging import Champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("lineage", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("lineage")
    runs = []
    for _ in range(2):
        with mlflow.start_run() as run:
            model_uri = log_bundle(saved, np.zeros((1, 32, 32, 3), np.float32), tiny_model)
        mlflow.register_model(model_uri, "lineage")
        runs.append(run.info.run_id)
    return uri, runs, lambda version, run_id: Champion("lineage", version, run_id, uri)


def test_the_champion_is_fetched_when_version_run_and_weights_agree(two_logged_runs, saved, tmp_path):
    from nriqa.ops.packaging import fetch_champion

    uri, runs, champion = two_logged_runs
    folder = fetch_champion(champion("2", runs[1]), tmp_path / "fetched")
    assert sha(folder / bundle.WEIGHTS) == sha(saved / bundle.WEIGHTS)


def test_a_version_of_another_run_is_not_packaged(two_logged_runs, tmp_path):
    from nriqa.ops.packaging import fetch_champion

    uri, runs, champion = two_logged_runs
    with pytest.raises(NriqaError, match=f"belongs to run {runs[0]}, not to the champion's run {runs[1]}"):
        fetch_champion(champion("1", runs[1]), tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


def test_weights_other_than_the_run_trained_are_not_packaged(two_logged_runs, tmp_path):
    from mlflow import MlflowClient

    from nriqa.ops.packaging import fetch_champion

    uri, runs, champion = two_logged_runs
    MlflowClient(uri).set_tag(runs[1], bundle.WEIGHTS_SHA256_TAG, "0" * 64)
    with pytest.raises(NriqaError, match=r"model.keras is not the one run \w+ trained"):
        fetch_champion(champion("2", runs[1]), tmp_path / "fetched")
