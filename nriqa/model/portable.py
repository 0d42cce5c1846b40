"""Scoring with the exported model (`nriqa.model.export`): numpy, Pillow and onnxruntime only.

    pip install onnxruntime pillow numpy    # and this package's source (pip install --no-deps)
    from nriqa.model.portable import OnnxModel
    model = OnnxModel.load("models/portable")     # model.onnx + model.json
    for row in model.score(["photo.png"]):
        print(row["path"], row["mos"], row["category"], row["distortions"] or row["distortion_note"])

It goes through the one image path everything else uses (`nriqa.core.imaging`: decoding and
the crop grid) and the same crop-to-image arithmetic (`nriqa.model.prediction`), so its scores
are the Keras model's (the export stage measures the difference). Importing it loads neither
TensorFlow nor Keras. `python -m nriqa score --runtime onnx` uses it too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nriqa.core.categories import categorize
from nriqa.core.errors import NriqaError
from nriqa.model.prediction import likely_distortions, score_paths

PORTABLE_FORMAT = 1  # model.json's layout; a runtime refuses a folder of another
ONNX_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
INFO = "model.json"


def portable_columns(distortion_types: list[str]) -> list[str]:
    """The model output's columns: the crop's MOS, then one logit per type-head class."""
    return ["mos", *(f"logit: {name}" for name in distortion_types)]


def read_info(folder: str | Path, file: str) -> dict:
    """An export folder's model.json, after checking that `file` is there and is the file it
    names (sha256): a missing, truncated or altered file is a NriqaError naming it."""
    folder = Path(folder)
    info_path, model_path = folder / INFO, folder / file
    for path in (info_path, model_path):
        if not path.is_file():
            raise NriqaError(f"{path}: missing; an exported model folder holds {ONNX_FILE}, "
                             f"{TFLITE_FILE} and {INFO} (the export stage writes them)")
    try:
        info = json.loads(info_path.read_text())
        expected = info["files"][file]["sha256"]
        if info["format"] != PORTABLE_FORMAT:
            raise NriqaError(f"{info_path}: format {info['format']!r}; this version reads "
                             f"{PORTABLE_FORMAT} (export the model again)")
    except (ValueError, KeyError, TypeError) as error:
        raise NriqaError(f"{info_path}: not an exported model's {INFO} ({error!r})") from None
    with model_path.open("rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected:
        raise NriqaError(f"{model_path}: sha256 {actual[:12]}… is not the {expected[:12]}… that "
                         f"{INFO} records: the file was altered or truncated")
    return info


class PortableModel:
    """An exported model and its model.json; `crop_outputs` is the forward pass."""

    def __init__(self, info: dict) -> None:
        self.info = info

    @property
    def preprocessing(self) -> dict:
        return self.info["preprocessing"]

    def crop_outputs(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, paths, *, thresholds: dict | None = None) -> list[dict]:
        """One row per file, in order: its MOS, category and likeliest distortions (as the service
        gives them: none, and a note, when none stands out), or its error."""
        thresholds = thresholds or self.info["categories"]
        rows = []
        for result in score_paths(self, self.preprocessing, [Path(p) for p in paths],
                                  progress=False):
            if result.error is not None:
                rows.append({"path": str(result.path), "error": str(result.error)})
                continue
            distortions, note = likely_distortions(result.probabilities)
            rows.append({"path": str(result.path), "mos": float(result.mos),
                         "category": categorize(float(result.mos), thresholds),
                         "distortions": distortions, "distortion_note": note})
        return rows


class OnnxModel(PortableModel):
    def __init__(self, session, info: dict) -> None:
        super().__init__(info)
        self.session = session
        self.input_name = info["input"]["name"]

    @classmethod
    def load(cls, folder: str | Path, *, threads: int | None = None) -> OnnxModel:
        import onnxruntime

        info = read_info(folder, ONNX_FILE)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(Path(folder) / ONNX_FILE), options,
                                               providers=["CPUExecutionProvider"])
        return cls(session, info)

    def crop_outputs(self, crops: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: crops.astype(np.float32)})[0]


class TfliteModel(PortableModel):
    """The TFLite file, through LiteRT's interpreter (ai-edge-litert); for the export's check."""

    def __init__(self, interpreter, info: dict) -> None:
        super().__init__(info)
        self.interpreter = interpreter
        self.input_index = interpreter.get_input_details()[0]["index"]
        self.output_index = interpreter.get_output_details()[0]["index"]
        self.batch = None

    @classmethod
    def load(cls, folder: str | Path, *, threads: int | None = None) -> TfliteModel:
        from ai_edge_litert.interpreter import Interpreter

        info = read_info(folder, TFLITE_FILE)
        return cls(Interpreter(model_path=str(Path(folder) / TFLITE_FILE), num_threads=threads),
                   info)

    def crop_outputs(self, crops: np.ndarray) -> np.ndarray:
        if self.batch != len(crops):
            self.interpreter.resize_tensor_input(self.input_index, crops.shape)
            self.interpreter.allocate_tensors()
            self.batch = len(crops)
        self.interpreter.set_tensor(self.input_index, crops.astype(np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()
