"""Packaging the champion model for serving: MLflow registry -> BentoML model store -> Bento.

A model travels as its bundle (`nriqa.model.bundle`): `fetch_bundle` downloads a registered
model (`models:/nriqa/3`) into a folder like the train stage's `models/`, and `save_to_store`
copies such a folder, byte for byte, into the BentoML model store, labelled with the MLflow
run id and registry version, with the serving limits (params.yaml `serve`) and the quality
categories in its metadata: the Bento then carries its own configuration, and `service.py`
reads it from there (environment variables still override it at run time).
`build_bento` builds the Bento from `bentofile.yaml`, pinned to that exact model version.

BentoML reads BENTOML_HOME when it is first imported, so callers set it before that
(`python -m stages.package` defaults it to the project's `bentoml_home/`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nriqa.core.config import Config
from nriqa.core.errors import NriqaError
from nriqa.core.stage import read_json
from nriqa.data.examples import write_examples
from nriqa.model.bundle import WEIGHTS, WEIGHTS_SHA256_TAG, bentoml_model, fetch_bundle, file_sha256
from nriqa.model.portable import ONNX_FILE, TFLITE_FILE, read_info
from nriqa.ops.registry import version_uri
from nriqa.ops.tracking import use_store

EXAMPLES_DIR = "examples"
# The exported model (model.onnx, model.tflite, model.json) in the stored model, for the web
# page's scoring on the device and for download (`nriqa.model.export`).
PORTABLE_DIR = "portable"
# onnxruntime-web's WebAssembly build, with which the web page scores on the device: where
# `make node` (npm ci) installs it in the project, and the Bento ships it (bentofile.yaml). Its ES
# module, the Emscripten module that imports and the WebAssembly binary; not the WebGPU, WebGL
# or JSPI builds.
RUNTIME_PATH = Path("node_modules", "onnxruntime-web", "dist")
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# The keys of params.yaml `serve` that the service reads; each has an environment override
# NRIQA_<KEY upper-cased>, e.g. NRIQA_MAX_PIXELS.
SERVE_KEYS = ("max_upload_bytes", "max_pixels", "max_batch_images", "max_batch_pixels",
              "max_batch_size")


def serve_settings(serve_params: dict) -> dict:
    """The serving limits baked into the model's metadata, as plain ints."""
    missing = [key for key in SERVE_KEYS if key not in serve_params]
    if missing:
        raise NriqaError(f"params.yaml serve: missing {', '.join(missing)}")
    settings = {key: int(serve_params[key]) for key in SERVE_KEYS}
    for key, value in settings.items():
        if value < 1:
            raise NriqaError(f"params.yaml serve.{key}: must be a positive number, got {value}")
    return settings


@dataclass(frozen=True)
class Champion:
    """The champion that promote recorded, in the store it was promoted in."""
    registered_model: str
    version: str
    run_id: str
    tracking_uri: str  # without credentials; those come from the environment

    @property
    def model_uri(self) -> str:
        # The exact version, never the alias: the alias may have moved since, and the Bento
        # is labelled with this version and run.
        return version_uri(self.registered_model, self.version)


def promoted_version(promotion_path: Path) -> Champion:
    promotion = read_json(promotion_path, stage="promote")
    missing = [key for key in ("registered_model", "champion_version", "champion_run_id",
                               "tracking_uri") if key not in promotion]
    if missing:
        raise NriqaError(f"{promotion_path}: missing {', '.join(missing)}; run the promote stage "
                         "again (`dvc repro -f promote`)")
    return Champion(promotion["registered_model"], str(promotion["champion_version"]),
                    promotion["champion_run_id"], promotion["tracking_uri"])


def fetch_champion(champion: Champion, destination: Path) -> Path:
    """The champion's bundle, downloaded from the store promote used (not the one this
    shell or params.yaml names), after checking that the version is the champion's run and
    that its model.keras is the very file that run's training wrote."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    use_store(champion.tracking_uri)
    where = f"{champion.model_uri} in {champion.tracking_uri}"
    try:
        client = MlflowClient()
        version_run = client.get_model_version(champion.registered_model, champion.version).run_id
        expected = client.get_run(champion.run_id).data.tags.get(WEIGHTS_SHA256_TAG)
    except MlflowException as error:
        raise NriqaError(f"{where}: cannot read the champion ({error.message})") from error
    if version_run != champion.run_id:
        raise NriqaError(f"{where} belongs to run {version_run}, not to the champion's run "
                         f"{champion.run_id} that promote recorded: run promote again")
    if expected is None:
        raise NriqaError(f"run {champion.run_id} has no {WEIGHTS_SHA256_TAG} tag (trained by an "
                         "older nriqa): retrain it (`dvc repro -f train`) before packaging")
    folder = fetch_bundle(champion.model_uri, destination, tracking_uri=champion.tracking_uri)
    if (found := file_sha256(folder / WEIGHTS)) != expected:
        raise NriqaError(f"{where}: its model.keras is not the one run {champion.run_id} trained "
                         f"(sha256 {found[:12]}…, the run says {expected[:12]}…); nothing was "
                         "packaged")
    return folder


def save_to_store(model_dir: str | Path, *, name: str, run_id: str, version: str,
                  serve: dict, categories: dict, model_uri: str = "",
                  portable_dir: str | Path | None = None):
    """Copy the bundle in `model_dir` into the BentoML model store; returns the stored model.

    Labels (searchable with `bentoml models list`) carry the MLflow lineage; the metadata also
    carries what the service needs at run time and must not drift from the model: the
    serving limits and the category thresholds. The web page's example images
    (`nriqa.data.examples`) go in the folder `examples/` beside the model files, and the
    exported model in `portable_dir`, if given, in `portable/`: it must be this very model's
    export (its model.json records the sha256 of the model.keras it was made from).
    """
    if portable_dir is not None:
        check_portable(Path(portable_dir), Path(model_dir))
    labels = {"mlflow_run_id": str(run_id), "registry_version": str(version)}
    metadata = {**labels, "model_uri": model_uri, "serve": serve_settings(serve),
                "categories": {key: float(value) for key, value in categories.items()}}
    with bentoml_model(model_dir, name, labels=labels, metadata=metadata) as stored:
        write_examples(Path(stored.path) / EXAMPLES_DIR)  # the web page's, made now
        if portable_dir is not None:
            shutil.copytree(portable_dir, Path(stored.path) / PORTABLE_DIR)
    return stored


def check_portable(portable_dir: Path, model_dir: Path) -> None:
    """A NriqaError unless `portable_dir` holds an intact export of the model in `model_dir`."""
    info = read_info(portable_dir, ONNX_FILE)
    read_info(portable_dir, TFLITE_FILE)
    exported = (info.get("source") or {}).get("model_sha256")
    packaged = file_sha256(Path(model_dir) / WEIGHTS)
    if exported != packaged:
        raise NriqaError(f"{portable_dir}: exported from model.keras {str(exported)[:12]}…, not "
                         f"from the {packaged[:12]}… being packaged; run the export stage again "
                         "(`dvc repro export`)")


def check_runtime(project_dir: Path) -> None:
    """A NriqaError unless the project holds the web page's runtime for scoring on the device
    (onnxruntime-web's WebAssembly build, which the Bento ships beside the exported model)."""
    runtime = Path(project_dir).resolve() / RUNTIME_PATH
    missing = [file for file in RUNTIME_FILES if not (runtime / file).is_file()]
    if missing:
        raise NriqaError(f"{runtime}: missing {', '.join(missing)}, which the web page scores on "
                         "the device with; run `make node` (npm ci) before packaging")


@contextmanager
def _env(**values: str):
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_bento(model_tag: str, *, project_dir: str | Path, bento_name: str,
                labels: dict[str, str]):
    """Build a Bento from `bentofile.yaml` that serves exactly `model_tag`.

    `service.py` chooses its model from NRIQA_MODEL_TAG (default `nriqa:latest`); setting it
    to the exact tag while BentoML imports the service pins that version into the Bento.
    Inside the Bento only that version exists, so the default resolves to it when served.
    """
    import bentoml

    project_dir = Path(project_dir).resolve()
    bentofile = project_dir / "bentofile.yaml"
    if not bentofile.is_file():
        raise NriqaError(f"{bentofile}: missing")
    with _env(NRIQA_MODEL_TAG=str(model_tag)):
        return bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(project_dir),
                                              name=bento_name, labels=labels)


def package(model_dir: str | Path, *, run_id: str, version: str, config: Config,
            project_dir: str | Path = ".", model_uri: str = "",
            portable_dir: str | Path | None = None) -> dict:
    """Model folder -> model store -> Bento. Returns what `reports/bento.json` records."""
    serve = config.serve.model_dump()
    categories = config.evaluate.categories
    if portable_dir is not None:
        check_runtime(Path(project_dir))
    # The model and the Bento share one name: the service's default tag is `<name>:latest`.
    stored = save_to_store(model_dir, name=serve["bento_name"],
                           run_id=run_id, version=version, serve=serve,
                           categories=categories, model_uri=model_uri,
                           portable_dir=portable_dir)
    bento = build_bento(str(stored.tag), project_dir=project_dir, bento_name=serve["bento_name"],
                        labels={"mlflow_run_id": str(run_id), "registry_version": str(version),
                                "model_tag": str(stored.tag)})
    return {"bento_tag": str(bento.tag), "model_tag": str(stored.tag),
            "mlflow_run_id": str(run_id), "registry_version": str(version),
            "model_uri": model_uri, "serve": serve_settings(serve)}
