"""What the service needs besides the weights: which model, its lineage, limits, preprocessing and
category thresholds.

The model tag is chosen when `service.py` is imported (it names the Bento's model); everything
else is read from the model store when the service starts, never at import, so the serving
modules can be imported and tested without a packaged model. The serving limits and category
thresholds were baked into the model's metadata at package time (params.yaml `serve` and
`evaluate.categories`); NRIQA_<KEY> overrides serve.<key> (NRIQA_MAX_PIXELS, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from nriqa.core.errors import NriqaError
from nriqa.ops.packaging import EXAMPLES_DIR, PORTABLE_DIR, SERVE_KEYS, serve_settings

DEFAULT_MODEL_TAG = "nriqa:latest"


def model_tag(service_dir: Path, environ: Mapping[str, str] = os.environ) -> str:
    """NRIQA_MODEL_TAG, else the model a built Bento was packaged with, else `nriqa:latest`.

    BentoML 1.4 keeps a Bento's models in the shared model store, where `nriqa:latest` is
    the newest model packaged, not necessarily this Bento's; the package stage records the
    exact tag in the Bento's labels, and `bento.yaml` sits beside the Bento's `src/`, the
    folder of `service.py` (`service_dir`).
    """
    if tag := environ.get("NRIQA_MODEL_TAG"):
        return tag
    bento_yaml = Path(service_dir).resolve().parent / "bento.yaml"
    if bento_yaml.is_file():
        labels = yaml.safe_load(bento_yaml.read_text()).get("labels") or {}
        if labels.get("model_tag"):
            return labels["model_tag"]
    return DEFAULT_MODEL_TAG


@dataclass(frozen=True)
class ServingSettings:
    model_tag: str
    model_version: str          # MLflow registry version
    mlflow_run_id: str
    categories: dict            # evaluate.categories: category name -> lower MOS bound
    preprocessing: dict         # model.json's: how images become crops
    mos_range: tuple            # model.json's: (lowest, highest) MOS of the labels it learned
    examples_dir: Path          # the web page's example images, beside the model
    portable_dir: Path          # the exported model (model.onnx, model.json), if packaged with one
    max_upload_bytes: int
    max_pixels: int
    max_batch_images: int
    max_batch_pixels: int
    max_batch_size: int


def serving_settings(stored, model_info: dict,
                     environ: Mapping[str, str] = os.environ) -> ServingSettings:
    """The settings of a model in the BentoML store (`stored`: its tag, path and metadata) whose
    `model.json` is `model_info`; NRIQA_<KEY> environment variables override the limits."""
    metadata = stored.info.metadata
    limits = dict(metadata.get("serve") or {})
    for key in SERVE_KEYS:
        if (value := environ.get(f"NRIQA_{key.upper()}")) is not None:
            if not (value.strip().isdigit() and int(value) >= 1):  # serve_settings would blame params.yaml
                raise NriqaError(f"NRIQA_{key.upper()}={value!r}: expected a whole number of "
                                 "at least 1")
            limits[key] = int(value)
        elif key not in limits:  # packaged before the limit existed
            raise NriqaError(f"model {stored.tag} was packaged without serve.{key}; package it "
                             f"again (`dvc repro package`) or set NRIQA_{key.upper()}")
    return ServingSettings(
        model_tag=str(stored.tag),
        model_version=str(metadata.get("registry_version", "")),
        mlflow_run_id=str(metadata.get("mlflow_run_id", "")),
        categories=dict(metadata["categories"]),
        preprocessing=model_info["preprocessing"],
        mos_range=tuple(model_info["mos_range"]),
        examples_dir=Path(stored.path) / EXAMPLES_DIR,
        portable_dir=Path(stored.path) / PORTABLE_DIR,
        **serve_settings(limits))


def stored_model(bento_model):
    """The model that a `bentoml.models.BentoModel` names, from the local model store."""
    stored = bento_model.stored
    if stored is None:
        raise NriqaError(f"model {bento_model.tag} is not in the BentoML model store (BENTOML_HOME="
                         f"{os.environ.get('BENTOML_HOME', '~/bentoml')}); run `dvc repro package` "
                         "or set NRIQA_MODEL_TAG")
    return stored
