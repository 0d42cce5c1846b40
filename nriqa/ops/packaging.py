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
from contextlib import contextmanager
from pathlib import Path

from nriqa.core.config import Config
from nriqa.core.errors import NriqaError
from nriqa.core.stage import read_json
from nriqa.data.examples import write_examples
from nriqa.model.bundle import bentoml_model
from nriqa.ops.registry import version_uri

EXAMPLES_DIR = "examples"
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


def promoted_version(promotion_path: Path) -> tuple[str, str, str]:
    """(model URI, MLflow run id, registry version) of the champion that promote recorded.

    The URI names the exact version (`models:/<name>/<version>`), never the alias: the alias may
    have moved since, and the Bento is labelled with this version and run.
    """

    promotion = read_json(promotion_path, stage="promote")
    missing = [key for key in ("registered_model", "champion_version", "champion_run_id")
               if key not in promotion]
    if missing:
        raise NriqaError(f"{promotion_path}: missing {', '.join(missing)}")
    version = str(promotion["champion_version"])
    return (version_uri(promotion["registered_model"], version), promotion["champion_run_id"],
            version)


def save_to_store(model_dir: str | Path, *, name: str, run_id: str, version: str,
                  serve: dict, categories: dict, model_uri: str = ""):
    """Copy the bundle in `model_dir` into the BentoML model store; returns the stored model.

    Labels (searchable with `bentoml models list`) carry the MLflow lineage; the metadata also
    carries what the service needs at run time and must not drift from the model: the
    serving limits and the category thresholds. The web page's example images
    (`nriqa.data.examples`) go in the folder `examples/` beside the model files.
    """
    labels = {"mlflow_run_id": str(run_id), "registry_version": str(version)}
    metadata = {**labels, "model_uri": model_uri, "serve": serve_settings(serve),
                "categories": {key: float(value) for key, value in categories.items()}}
    with bentoml_model(model_dir, name, labels=labels, metadata=metadata) as stored:
        write_examples(Path(stored.path) / EXAMPLES_DIR)  # the web page's, made now
    return stored


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
            project_dir: str | Path = ".", model_uri: str = "") -> dict:
    """Model folder -> model store -> Bento. Returns what `reports/bento.json` records."""
    serve = config.serve.model_dump()
    categories = config.evaluate.categories
    # The model and the Bento share one name: the service's default tag is `<name>:latest`.
    stored = save_to_store(model_dir, name=serve["bento_name"],
                           run_id=run_id, version=version, serve=serve,
                           categories=categories, model_uri=model_uri)
    bento = build_bento(str(stored.tag), project_dir=project_dir, bento_name=serve["bento_name"],
                        labels={"mlflow_run_id": str(run_id), "registry_version": str(version),
                                "model_tag": str(stored.tag)})
    return {"bento_tag": str(bento.tag), "model_tag": str(stored.tag),
            "mlflow_run_id": str(run_id), "registry_version": str(version),
            "model_uri": model_uri, "serve": serve_settings(serve)}
