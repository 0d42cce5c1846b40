"""The model bundle: the one on-disk form of a trained model, wherever it lies.

A bundle is a folder with two files:
  model.keras  the Keras model, saved byte-identically for identical weights (`save_bundle`)
  model.json   what turns images into the model's input and its output into answers:
               `preprocessing` (mode, resize, crop_size, stride, max_crops), `mos_range` (the
               label scale: the lowest and highest MOS), `distortion_types` (the names of the
               type head's classes in column order, `nriqa.core.taxonomy.head_types`; empty
               without that head), and the training's own record (params, best epoch, split sizes)

The train stage writes it to `models/`; `nriqa.model.pyfunc.log_bundle` logs it to MLflow as a
keras-flavor model whose weights file is this same file (and whose pyfunc flavor scores images); `fetch_bundle` gets it back from MLflow and
`bentoml_model` copies it into the BentoML model store. Every copy of model.keras is the file
train wrote, byte for byte: the model is never loaded and saved again on its way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nriqa.core.errors import NriqaError
from nriqa.core.stage import write_json, written_aside
from nriqa.core.taxonomy import head_types, type_name

WEIGHTS = "model.keras"
INFO = "model.json"
FILES = (WEIGHTS, INFO)
PREPROCESSING_KEYS = ("mode", "resize", "crop_size", "stride", "max_crops")
# Inside a logged MLflow model: the keras flavor keeps the weights here, the rest lies on top.
MLFLOW_WEIGHTS = "data/model.keras"
_PINNED_TIME = (1980, 1, 1, 0, 0, 0)
# The run tag holding the sha256 of the model.keras that train wrote and logged.
WEIGHTS_SHA256_TAG = "nriqa.model_sha256"


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# --- Save -------------------------------------------------------------------------------------

def save_bundle(model, folder: str | Path, info: dict) -> Path:
    """Write model.keras and model.json into `folder`, each whole or not at all.

    `info` is model.json's content: it needs `preprocessing` and `mos_range`; the names of the
    type head's classes (`distortion_types`) are added from the model.
    """
    folder = Path(folder)
    info = {**info, "distortion_types": type_names(model)}
    check_info(info, folder / INFO)
    with written_aside(folder / WEIGHTS) as aside:
        save_weights(model, aside)
    write_json(folder / INFO, info)
    return folder


def save_weights(model, path: str | Path) -> None:
    """`model.save`, made byte-identical for identical weights so DVC sees no spurious change.

    A .keras file is a zip whose metadata carries the save time, whose entries carry
    timestamps, and whose config names each object shared between layers (the dtype policy) by
    its memory address, which differs from one process to the next. The time is pinned and the
    shared objects are numbered in order of appearance. The weights are already deterministic.
    """
    with tempfile.TemporaryDirectory() as scratch:
        raw = os.path.join(scratch, WEIGHTS)
        model.save(raw)
        with zipfile.ZipFile(raw) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            for entry in source.infolist():
                data = source.read(entry)
                if entry.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata["date_saved"] = "1980-01-01@00:00:00"
                    data = json.dumps(metadata).encode()
                elif entry.filename == "config.json":
                    data = json.dumps(_number_shared_objects(json.loads(data))).encode()
                out.writestr(zipfile.ZipInfo(entry.filename, date_time=_PINNED_TIME), data,
                             compress_type=zipfile.ZIP_DEFLATED)


def _number_shared_objects(config, numbers: dict | None = None):
    """The config with each `shared_object_id` replaced by 1, 2, ... in order of appearance;
    Keras only matches equal ids when loading, so the numbering keeps what is shared."""
    numbers = {} if numbers is None else numbers
    if isinstance(config, list):
        return [_number_shared_objects(item, numbers) for item in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        if key == "shared_object_id":
            out[key] = numbers.setdefault(value, len(numbers) + 1)
        else:
            out[key] = _number_shared_objects(value, numbers)
    return out


def type_names(model) -> list[str]:
    """The type head's classes in column order (`nriqa.core.taxonomy.head_types`); none
    without the head."""
    return [type_name(t) for t in head_types(int(model.output_shape[-1]) - 1)]


# --- Check and load ---------------------------------------------------------------------------

def check_info(info, where: Path) -> dict:
    """model.json's content, or a NriqaError naming the file and the field that is wrong."""
    if not isinstance(info, dict):
        raise NriqaError(f"{where}: not a JSON object")
    preprocessing = info.get("preprocessing")
    if not isinstance(preprocessing, dict):
        raise NriqaError(f"{where}: has no `preprocessing` section")
    missing = [key for key in PREPROCESSING_KEYS if key not in preprocessing]
    if missing:
        raise NriqaError(f"{where}: preprocessing lacks {', '.join(missing)}")
    if not {"mos_range", "distortion_types"} & info.keys():
        # Saved before model.json recorded its scale and type names (an older nriqa).
        raise NriqaError(f"{where}: written by an older nriqa (no mos_range or distortion_types); "
                         "train a new model and, where the old champion stays in its way, "
                         "force its promotion: `dvc exp run -S mlflow.force_promote=true promote`")
    mos_range = info.get("mos_range")
    if (not isinstance(mos_range, list) or len(mos_range) != 2
            or not all(isinstance(v, (int, float)) for v in mos_range)
            or not mos_range[0] < mos_range[1]):
        raise NriqaError(f"{where}: mos_range must be [lowest, highest] MOS, got {mos_range!r}")
    names = info.get("distortion_types")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise NriqaError(f"{where}: distortion_types must be a list of names, got {names!r}")
    return info


def check_bundle(folder: str | Path) -> dict:
    """A bundle folder's model.json, after checking that both files are there and it is sound."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise NriqaError(f"{folder}: not a model folder, {' and '.join(missing)} missing "
                         "(run `dvc repro train` or pass the folder that holds them)")
    try:
        info = json.loads((folder / INFO).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NriqaError(f"{folder / INFO}: not valid JSON ({error})") from error
    return check_info(info, folder / INFO)


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: what scoring needs, all from one folder."""
    model: object            # keras.Model
    info: dict               # model.json

    @property
    def preprocessing(self) -> dict:
        return self.info["preprocessing"]

    @property
    def mos_range(self) -> tuple[float, float]:
        return tuple(self.info["mos_range"])

    @property
    def distortion_types(self) -> list[str]:
        return self.info["distortion_types"]


def load_bundle(folder: str | Path) -> Bundle:
    """The model and its model.json; a NriqaError names what is missing or unreadable."""
    import keras

    # lazy: loads TensorFlow; registers the custom layers before Keras deserializes
    import nriqa.model.network  # noqa: F401

    folder = Path(folder)
    info = check_bundle(folder)
    # Keras calls a truncated archive "File not found"; say what it is.
    if not zipfile.is_zipfile(folder / WEIGHTS):
        raise NriqaError(f"{folder / WEIGHTS}: corrupt or truncated (not a complete .keras zip "
                         "archive); train again or restore the file (`dvc checkout`)")
    try:
        model = keras.saving.load_model(folder / WEIGHTS)
    except Exception as error:  # zipfile, h5py, Keras: all mean "not a model this code reads"
        raise NriqaError(f"{folder / WEIGHTS}: cannot load the model "
                         f"({type(error).__name__}: {error})") from error
    columns = int(model.output_shape[-1])
    if len(info["distortion_types"]) != columns - 1:
        raise NriqaError(f"{folder / INFO}: distortion_types names {len(info['distortion_types'])} "
                         f"types, but the model has {columns - 1}")
    return Bundle(model, info)


def load_model(folder: str | Path):
    """(Keras model, model.json) of a bundle folder."""
    bundle = load_bundle(folder)
    return bundle.model, bundle.info


# --- MLflow -----------------------------------------------------------------------------------

def model_signature(crop_size: int, columns: int = 1):
    """float32 RGB crops in 0..255, (batch, S, S, 3) -> one row per crop, (batch, columns):
    the MOS, then the distortion-type logits where the model has that head."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, crop_size, crop_size, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, columns))]))


def fetch_bundle(model_uri: str, destination: str | Path, *,
                 tracking_uri: str | None = None) -> Path:
    """Download a logged or registered model (`models:/nriqa/3`) into `destination` as a bundle:
    its model.keras and model.json, copied as MLflow holds them."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nriqa-mlflow-") as download:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                             dst_path=download))
        except Exception as error:  # MlflowException, OSError, ...: all mean "cannot get it"
            raise NriqaError(f"{model_uri}: cannot download the model from MLflow "
                             f"({error})") from error
        for source, name in ((MLFLOW_WEIGHTS, WEIGHTS), (INFO, INFO)):
            if not (local / source).is_file():
                raise NriqaError(f"{model_uri} has no {source}: not a model logged by nriqa "
                                 "(retrain with this version)")
            shutil.copyfile(local / source, destination / name)
    check_bundle(destination)
    return destination


# --- BentoML ----------------------------------------------------------------------------------

@contextlib.contextmanager
def bentoml_model(folder: str | Path, name: str, *, labels: dict, metadata: dict):
    """A new model in the BentoML model store holding the bundle's files as they are; the block
    may add files beside them (`stored.path`). Saved when the block completes."""
    import bentoml

    folder = Path(folder)
    check_bundle(folder)
    with bentoml.models.create(name, labels=labels, metadata=metadata) as stored:
        for filename in FILES:
            shutil.copyfile(folder / filename, Path(stored.path) / filename)
        yield stored
