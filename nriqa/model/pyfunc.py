"""The logged model as an MLflow pyfunc: a table of images in, a table of scores out.

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/nriqa@champion")
    model.predict(pd.DataFrame({"path": ["photo.jpg", "file:///data/b.png", "s3://bucket/c.png"]}))
    model.predict(pd.DataFrame({"path": ["upload.png"], "content": [png_bytes]}))

Input columns: `path` (a file path or a URI; any scheme fsspec reads) and, optionally,
`content` (the image's bytes; `path` then only names it): the columns of Spark's `binaryFile`
reader. Output, one row per input row and in its order: `path`, `mos`, `category`,
`distortions` (the three likeliest types with their probabilities, when one stands out),
`distortion_note`, `error` (why the image has no score: the rest is empty) and
`model_version`: the fields of a `python -m nriqa score` row, computed by the same functions
(`nriqa.core.imaging`, `nriqa.model.prediction`), so a file scores the same here.

The train stage's model (`log_bundle`) is one MLflow model with two flavors:
`keras` (the network itself, `mlflow.keras.load_model`) and `python_function`, whose loader is
this module's `_load_pyfunc`, imported from the model's own `code/nriqa/` (the whole package, so
the model loads where only its pinned requirements are installed). Registering that model is
enough for `mlflow.pyfunc.load_model("models:/nriqa@champion")`, `mlflow models serve` and
`mlflow.pyfunc.spark_udf` to score images; the registry, promotion and packaging see the
same registered versions as before.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

import nriqa
from nriqa.core.categories import DEFAULT_THRESHOLDS, categorize
from nriqa.core.errors import NriqaError
from nriqa.model.bundle import (
    INFO,
    MLFLOW_WEIGHTS,
    WEIGHTS,
    WEIGHTS_SHA256_TAG,
    file_sha256,
    load_bundle,
    model_signature,
)
from nriqa.model.portable import ONNX_FILE, OnnxModel
from nriqa.model.prediction import likely_distortions, score_paths

INPUT_COLUMNS = ("path", "content")
OUTPUT_COLUMNS = ("path", "mos", "category", "distortions", "distortion_note", "error",
                  "model_version")
# How many of the likeliest distortion types a row names (as the CLI's).
TOP_DISTORTIONS = 3
# Beside MLmodel: what the pyfunc needs besides the bundle (the category thresholds).
SCORING_FILE = "scoring.json"
# The python_function flavor's loader, imported from the model's code/ folder.
LOADER_MODULE = "nriqa.model.pyfunc"


class ImageScorer:
    """A loaded model (Keras, or an exported one from `nriqa.model.portable`), its model.json and
    the category thresholds: scores a table of images (`score_frame`)."""

    def __init__(self, model, info: dict, thresholds: dict | None = None,
                 model_version: str | None = None) -> None:
        self.model, self.info = model, info
        self.thresholds = dict(thresholds or DEFAULT_THRESHOLDS)
        self.model_version = model_version

    @classmethod
    def load(cls, folder: str | Path, thresholds: dict | None = None,
             model_version: str | None = None) -> ImageScorer:
        """A bundle folder (model.keras + model.json) or an exported one (model.onnx +
        model.json, scored through onnxruntime without TensorFlow)."""
        folder = Path(folder)
        if (folder / ONNX_FILE).is_file():
            model = OnnxModel.load(folder)
            return cls(model, model.info, thresholds or model.info.get("categories"),
                       model_version)
        bundle = load_bundle(folder)
        return cls(bundle.model, bundle.info, thresholds, model_version)

    def predict(self, model_input, params=None):
        """MLflow's pyfunc entry point (`PyFuncModel.predict` calls it)."""
        return self.score_frame(model_input)

    def score_frame(self, frame):
        """One output row per row of `frame` (columns `path`, optionally `content`), in order;
        an image that cannot be read, decoded or scored gets its `error`, the others a score."""
        import pandas as pd

        paths = [str(p) for p in frame["path"]]
        contents = list(frame["content"]) if "content" in frame.columns else [None] * len(paths)
        rows: list[dict] = [dict.fromkeys(OUTPUT_COLUMNS) for _ in paths]
        sources, positions = [], []
        for position, (path, content) in enumerate(zip(paths, contents)):
            rows[position].update(path=path, model_version=self.model_version)
            try:
                sources.append(image_source(path, content))
                positions.append(position)
            except Exception as error:  # noqa: BLE001  one bad row must not stop the rest
                rows[position]["error"] = describe_error(path, error)
        names = [paths[p] for p in positions]
        for position, scored in zip(positions, score_paths(self.model, self.info["preprocessing"],
                                                           sources, names=names, progress=False)):
            row = rows[position]
            if scored.error is not None:
                row["error"] = describe_error(row["path"], scored.error)
                continue
            distortions, note = likely_distortions(scored.probabilities, TOP_DISTORTIONS)
            row.update(mos=round(float(scored.mos), 6),
                       category=categorize(float(scored.mos), self.thresholds),
                       distortions=distortions, distortion_note=note)
        # Object columns keep None as None: pandas would turn a missing string or MOS into NaN,
        # which `mlflow models serve` writes as a bare NaN (not JSON) and spark_udf as "nan".
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), dtype=object)


def image_source(path: str, content=None):
    """What `nriqa.core.imaging.decode_image` reads for one row: its bytes when the row has
    them, else the local file (a path or a file: URI), else the bytes at the URI (fsspec)."""
    if content is not None and not (isinstance(content, float) and np.isnan(content)):
        return bytes(content)
    scheme, sep, rest = path.partition("://")
    if not sep or len(scheme) < 2:  # a path (a Windows drive letter is not a scheme)
        return Path(path)
    if scheme == "file":
        return Path(rest)
    import fsspec

    with fsspec.open(path, "rb") as stream:
        return stream.read()


def describe_error(path: str, error: Exception) -> str:
    # NriqaError messages name the image already; anything else gets its name and its type.
    if isinstance(error, NriqaError):
        return str(error)
    return f"{path}: {type(error).__name__}: {error}"


def pyfunc_signature():
    """The pyfunc's columns: `path` and optional `content` in; one row of scores out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    distortion = Object([Property("type", "long"), Property("name", "string"),
                         Property("probability", "double")])
    return ModelSignature(
        inputs=Schema([ColSpec("string", "path"), ColSpec("binary", "content", required=False)]),
        outputs=Schema([ColSpec("string", "path"), ColSpec("double", "mos", required=False),
                        ColSpec("string", "category", required=False),
                        ColSpec(Array(distortion), "distortions", required=False),
                        ColSpec("string", "distortion_note", required=False),
                        ColSpec("string", "error", required=False),
                        ColSpec("string", "model_version", required=False)]))


def example_image(crop: np.ndarray) -> bytes:
    """A training crop (float 0..255) as PNG bytes: the pyfunc's input example."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- Logging -----------------------------------------------------------------------------------

def log_bundle(folder: str | Path, example, model, *, categories: dict | None = None) -> str:
    """Log the bundle to the active MLflow run as one model of two flavors; returns its URI.

    `keras`: the network. The flavor saves the model itself (`model.save`, whose bytes carry
    the save time); its weights file is then replaced by the bundle's model.keras, so that MLflow
    holds the very file train wrote. `python_function`: images in, scores out
    (`nriqa.model.pyfunc`), so `mlflow.pyfunc.load_model`, `mlflow models serve` and
    `mlflow.pyfunc.spark_udf` score image files, URIs or bytes. Beside the flavor's files:
      model.json          the bundle's
      scoring.json        the category thresholds (`categories`, params.yaml's
                          evaluate.categories) the pyfunc names categories by
      input_example.json  one image (a real training crop, PNG bytes) in the pyfunc's columns,
                          and serving_input_example.json, the same as an `/invocations` payload
      code/nriqa/         the package's source, what `code_paths` gives other flavors: the
                          pyfunc's loader and the custom layer; put `code/` on sys.path and
                          `import nriqa.model.network` to load the Keras model anywhere
    The signature is the pyfunc's (columns, which `mlflow.pyfunc` checks inputs against; the
    keras flavor takes the crops as `model_signature` says); `example` is a batch of training
    crops and `model` the bundle's model, already in memory (the train stage has just saved it).
    """
    from importlib.metadata import version

    import mlflow
    import pandas as pd
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    folder = Path(folder)
    # Pinned requirements, so `mlflow models serve` and spark_udf rebuild the same environment;
    # otherwise MLflow infers them by loading the model in a subprocess, which costs a
    # TensorFlow import and cannot see the custom layer anyway.
    requirements = [f"{name}=={version(name)}" for name in
                    ("keras", "tensorflow", "numpy", "pandas", "pillow", "fsspec")]
    # The keras flavor takes tensor signatures only: the crops in, the MOS and logits out.
    logged = mlflow.keras.log_model(model, name="model", pip_requirements=requirements,
                                    signature=model_signature(example.shape[1],
                                                              model.output_shape[-1]))
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp)
        (extra / MLFLOW_WEIGHTS).parent.mkdir(parents=True)
        shutil.copyfile(folder / WEIGHTS, extra / MLFLOW_WEIGHTS)
        shutil.copyfile(folder / INFO, extra / INFO)
        (extra / SCORING_FILE).write_text(json.dumps(
            {"categories": dict(categories or DEFAULT_THRESHOLDS)}, indent=2))
        package = Path(nriqa.__file__).parent
        for source in sorted(package.rglob("*.py")):
            target = extra / "code" / "nriqa" / source.relative_to(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        # The python_function flavor that keras.log_model wrote loads the bare network; this
        # one scores images, through the loader in code/.
        meta = Model.load(logged.model_uri)
        meta.flavors["python_function"].update(loader_module=LOADER_MODULE, code="code")
        meta.signature = pyfunc_signature()
        _save_example(meta, pd.DataFrame({"path": ["example.png"],
                                          "content": [example_image(example[0])]}),
                      str(extra))
        meta.save(str(extra / "MLmodel"))
        mlflow.MlflowClient().log_model_artifacts(logged.model_id, str(extra))
    # What packaging checks the champion it downloads against (`nriqa.ops.packaging`).
    mlflow.set_tag(WEIGHTS_SHA256_TAG, file_sha256(folder / WEIGHTS))
    return logged.model_uri


# --- MLflow's loader ---------------------------------------------------------------------------

def _load_pyfunc(path: str) -> ImageScorer:
    """Called by `mlflow.pyfunc.load_model` with the downloaded model's folder."""
    root = Path(path)
    scoring = json.loads((root / SCORING_FILE).read_text())
    with tempfile.TemporaryDirectory(prefix="nriqa-pyfunc-") as bundle:
        # load_bundle reads a bundle folder; the logged model keeps the weights under data/.
        (Path(bundle) / WEIGHTS).symlink_to((root / MLFLOW_WEIGHTS).resolve())
        (Path(bundle) / INFO).symlink_to((root / INFO).resolve())
        loaded = load_bundle(bundle)
    return ImageScorer(loaded.model, loaded.info, scoring["categories"],
                       registered_version(root))


def registered_version(root: Path) -> str | None:
    """The number of the registered version made from this logged model (the newest, where
    there are several), found through the registry the process uses; None where the model is
    not registered or the registry cannot be asked (a Spark executor without its address)."""
    try:
        import mlflow
        from mlflow.models import Model

        logged = Model.load(root / "MLmodel")
        versions = [v for v in mlflow.MlflowClient().search_model_versions(
                        f"run_id = '{logged.run_id}'")
                    if logged.model_id and logged.model_id in (v.source or "")]
    except Exception:  # noqa: BLE001  the scores do not depend on it
        return None
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return str(newest.version)
