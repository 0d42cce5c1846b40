"""The trained model in portable forms: ONNX and TFLite, and the model.json a runtime needs.

Both files are written by Keras 3's own exporters (`model.export(format="onnx" | "litert")`,
which run tf2onnx and TF's LiteRT converter). The local contrast normalization layer is plain
ops (a padded depthwise convolution with a constant kernel), so it converts as it is. Either
file maps float32 RGB crops in 0..255, (batch, S, S, 3), to one row per crop: the MOS, then the
distortion-type logits. The crops, their mean and the softmax stay outside the model, in
`nriqa.model.portable`, which scores with the ONNX file and needs only numpy, Pillow and
onnxruntime.

`parity` measures what an export may change: on the same images, each runtime's image MOS and
likeliest type against the Keras model's.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nriqa.core.errors import NriqaError
from nriqa.core.imaging import crops_for_prediction, decode_image, evenly_spaced
from nriqa.core.runtime import usable_cpus
from nriqa.core.stage import write_json, written_aside
from nriqa.model.bundle import file_sha256
from nriqa.model.portable import (
    INFO,
    ONNX_FILE,
    PORTABLE_FORMAT,
    TFLITE_FILE,
    OnnxModel,
    TfliteModel,
    portable_columns,
)
from nriqa.model.prediction import CHUNK, score_crop_sets

# What an export may change, at most: an image's MOS (max |ΔMOS|, on the model's MOS scale).
MOS_TOLERANCE = 1e-3


def export_portable(model, info: dict, folder: str | Path, *, categories: dict,
                    source: dict) -> Path:
    """Write model.onnx, model.tflite and model.json into `folder`, each whole or not at all.

    `info` is the bundle's model.json (preprocessing, MOS range, type names); `categories` the
    category thresholds (evaluate.categories); `source` names the model exported (MLflow run,
    registry version, sha256 of its model.keras), so a portable file traces back to it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Keras exports only a model that has run once (a loaded model has not).
    model(np.zeros((1, *model.input_shape[1:]), np.float32), training=False)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch, ONNX_FILE)
        tflite_path = Path(scratch, TFLITE_FILE)
        with warnings.catch_warnings():
            # Keras's tf2onnx shim probes `np.object`, which numpy 2 warns about; nothing to fix here.
            warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
            model.export(str(onnx_path), format="onnx", verbose=False)
        model.export(str(tflite_path), format="litert", verbose=False)
        input_name = _canonical_onnx(onnx_path)
        for path in (onnx_path, tflite_path):
            with written_aside(folder / path.name) as aside:
                os.replace(path, aside)
    portable = {
        "format": PORTABLE_FORMAT,
        "files": {name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
                  for name in (ONNX_FILE, TFLITE_FILE)},
        "input": {"name": input_name, "shape": [None, *model.input_shape[1:]], "dtype": "float32",
                  "values": "RGB, 0..255, as decoded; no scaling (the model normalizes)"},
        "columns": portable_columns(info["distortion_types"]),
        "preprocessing": info["preprocessing"],
        "mos_range": info["mos_range"],
        "categories": dict(categories),
        "distortion_types": info["distortion_types"],
        "source": source,
    }
    write_json(folder / INFO, portable)
    return folder


def _canonical_onnx(onnx_path: Path) -> str:
    """Rename the graph's tensors and nodes in graph order, and order its constants by first use;
    returns the input's name.

    tf2onnx numbers the names it makes from a process-wide counter and optimizes in an order
    that varies from one process to the next, so the same weights gave different bytes. The
    input and output keep their names; the batch dimension is called `batch`.
    """
    import onnx

    proto = onnx.load(str(onnx_path))
    graph = proto.graph
    kept = {value.name for value in (*graph.input, *graph.output)}
    names: dict[str, str] = {}

    def rename(name: str, prefix: str) -> str:
        if not name or name in kept:
            return name
        return names.setdefault(name, f"{prefix}{len(names)}")

    constants = {tensor.name for tensor in graph.initializer}
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{index}"
        for i, name in enumerate(node.input):
            node.input[i] = rename(name, "constant_" if name in constants else "tensor_")
        for i, name in enumerate(node.output):
            node.output[i] = rename(name, "tensor_")
    for tensor in graph.initializer:
        tensor.name = names.get(tensor.name, tensor.name)
    order = sorted(graph.initializer, key=lambda tensor: int(tensor.name.rsplit("_", 1)[1]))
    sorted_constants = [onnx.TensorProto.FromString(t.SerializeToString()) for t in order]
    del graph.initializer[:]
    graph.initializer.extend(sorted_constants)
    del graph.value_info[:]  # shape annotations under the old names; onnxruntime infers them
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.name, graph.doc_string, proto.doc_string = "nriqa", "", ""
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    return graph.input[0].name


def parity_sample(paths: list[Path], count: int | None) -> list[Path]:
    """`count` of `paths`, spread evenly over them in name order, case aside (every one for None).

    The check is of numerics, not of the data: a few hundred images of every reference, type and
    level cost seconds, where a large test split scored three times took minutes."""
    paths = sorted(paths, key=lambda path: (str(path).lower(), str(path)))
    if count is None or count >= len(paths):
        return paths
    return evenly_spaced(paths, count)


def parity(model, preprocessing: dict, paths: list[Path], folder: str | Path) -> dict:
    """Each portable runtime's largest image-MOS difference from the Keras model, and how many
    images' likeliest type differs, over the images `paths` (decoded and cropped once, a chunk
    at a time, and scored by all three); and under `seconds`, each runtime's scoring time (which
    varies from run to run: keep it out of files DVC tracks)."""
    threads = usable_cpus()
    runtimes = {"onnx": OnnxModel.load(folder, threads=threads),
                "tflite": TfliteModel.load(folder, threads=threads)}
    worst = dict.fromkeys(runtimes, 0.0)
    mismatches = dict.fromkeys(runtimes, 0)
    seconds = dict.fromkeys(["keras", *runtimes], 0.0)
    for start in tqdm(range(0, len(paths), CHUNK), desc="export check", unit="chunk",
                      file=sys.stderr, disable=len(paths) <= CHUNK):
        crop_sets = [crops_for_prediction(decode_image(path), preprocessing)
                     for path in paths[start:start + CHUNK]]
        start_time = time.perf_counter()
        keras_mos, keras_types = _scores(model, crop_sets)
        seconds["keras"] += time.perf_counter() - start_time
        for name, runtime in runtimes.items():
            start_time = time.perf_counter()
            mos, types = _scores(runtime, crop_sets)
            seconds[name] += time.perf_counter() - start_time
            worst[name] = max(worst[name], float(np.max(np.abs(mos - keras_mos))))
            if types is not None:
                mismatches[name] += int(np.sum(types != keras_types))
    return {"images": len(paths), "mos_tolerance": MOS_TOLERANCE, **{
        name: {"max_abs_mos": worst[name], "type_mismatches": mismatches[name],
               "passed": worst[name] <= MOS_TOLERANCE and mismatches[name] == 0}
        for name in runtimes}, "seconds": seconds}


def _scores(model, crop_sets):
    mos, probabilities, _ = score_crop_sets(model, crop_sets)
    return mos, None if probabilities is None else probabilities.argmax(axis=1)


def check_parity(figures: dict, report: Path) -> None:
    failed = [name for name in ("onnx", "tflite") if not figures[name]["passed"]]
    if failed:
        detail = "; ".join(f"{name}: max |ΔMOS| {figures[name]['max_abs_mos']:.2e}, "
                           f"{figures[name]['type_mismatches']} images with another likeliest type"
                           for name in failed)
        raise NriqaError(f"the exported model does not score as the Keras model does ({detail}; "
                         f"allowed: |ΔMOS| <= {MOS_TOLERANCE}, no type differs); see {report}")
