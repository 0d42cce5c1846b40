"""Scoring images with a trained model: the functions evaluate, the service and the CLI call.

An image's predicted MOS is the mean of the model's scores over a fixed grid of crops
(`nriqa.core.imaging.crops_for_prediction`); crops of many images go through the model in one
batched call. `score_paths` scores files: the evaluate stage (test split, evaluate.external) and
`python -m nriqa score` both go through it.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nriqa.core import imaging
from nriqa.core.taxonomy import head_types, type_name

# Files decoded and scored per model call. Their crops (at most predict.max_crops each) fill
# the model's batches well, and only one chunk of crops waits in memory, never the decoded
# images. 16 images of 48 crops are three full batches of 256 crops.
CHUNK = 16


@dataclass
class FileScore:
    """One file's scores, or why it has none."""

    path: Path
    mos: np.float32 | None = None
    probabilities: np.ndarray | None = None  # the type head's, column k-1 is type k; None without
    crop_scores: np.ndarray | None = None  # each crop's MOS, whose mean is `mos`
    kept: Any = None  # what `score_paths`'s `keep` returned for the decoded image
    error: Exception | None = None  # set when the file could not be decoded or scored


def score_paths(model, preprocessing: dict, paths: list[Path], *, names: list[str] | None = None,
                keep: Callable | None = None, desc: str | None = None,
                progress: bool = True) -> Iterator[FileScore]:
    """Yield each file's `FileScore`, in order, as each chunk of `CHUNK` files is scored.

    Files are decoded only when their chunk comes up, and each decoded image is reduced to its
    crops at once (and to `keep(image)`, if given, e.g. a thumbnail), so memory holds one image
    and one chunk of crops however many files there are. A file that fails for any reason gets
    its exception as `error`, and the others are scored; callers decide whether to go on.
    `names` label the files in decoding errors (default: their paths). A progress bar counts
    files on stderr.
    """
    paths = list(paths)
    names = list(names) if names is not None else [None] * len(paths)
    with _progress_bar(len(paths), desc, progress and len(paths) > 1) as bar:
        for start in range(0, len(paths), CHUNK):
            results, crop_sets = [], []
            for path, name in zip(paths[start:start + CHUNK], names[start:start + CHUNK]):
                try:
                    image = imaging.decode_image(path, name=name)
                    crops = imaging.crops_for_prediction(image, preprocessing)
                    kept = keep(image) if keep else None
                except Exception as error:  # noqa: BLE001  one bad file must not stop the rest
                    results.append(FileScore(path, error=error))
                    continue
                crop_sets.append(crops)
                results.append(FileScore(path, kept=kept))
            decoded = [result for result in results if result.error is None]
            try:
                # One model pass per chunk gives the MOS, the type probabilities and the map.
                mos, probabilities, crop_scores = score_crop_sets(model, crop_sets)
            except Exception as error:  # noqa: BLE001
                for result in decoded:
                    result.error = error
            else:
                for i, result in enumerate(decoded):
                    result.mos, result.crop_scores = mos[i], crop_scores[i]
                    result.probabilities = None if probabilities is None else probabilities[i]
            yield from results
            bar.update(len(results))


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, count: int) -> None:
        pass


def _progress_bar(total: int, desc: str | None, shown: bool):
    """tqdm's bar on stderr, or nothing; without a bar, tqdm is not needed (nriqa.model.portable)."""
    if not shown:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr)


def predict_mos(model, images: list[np.ndarray], preprocessing: dict,
                batch_size: int = 256) -> np.ndarray:
    """Predicted MOS for each decoded image (uint8 HxWx3), in order."""
    crop_sets = [imaging.crops_for_prediction(image, preprocessing) for image in images]
    return score_images(model, crop_sets, batch_size)[0]


def score_images(model, crop_sets: list[np.ndarray], batch_size: int = 256):
    """(MOS per image, distortion-type probabilities per image or None) from one model pass.

    An image's MOS is the mean of its crops' scores; its type probabilities are the softmax
    of its crops' mean logits (column k-1 is TID2013 type k). Models without a type head give
    None.
    """
    return score_crop_sets(model, crop_sets, batch_size)[:2]


def score_crop_sets(model, crop_sets: list[np.ndarray], batch_size: int = 256):
    """`score_images`'s (MOS, probabilities) and, third, each image's crop scores: the MOS of
    every crop, whose mean is the image's MOS (the quality map, `nriqa.serving.quality_map`)."""
    if not crop_sets:
        return np.zeros(0, dtype=np.float32), None, []
    outputs = predict_crops(model, np.concatenate(crop_sets), batch_size)
    bounds = np.cumsum([0] + [len(crops) for crops in crop_sets])
    per_image = [outputs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    means = np.stack([image_outputs.mean(axis=0) for image_outputs in per_image])
    mos = means[:, 0].astype(np.float32)
    crop_scores = [image_outputs[:, 0] for image_outputs in per_image]
    if means.shape[1] == 1:
        return mos, None, crop_scores
    logits = means[:, 1:] - means[:, 1:].max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return mos, probabilities.astype(np.float32), crop_scores


def top_distortions(probabilities: np.ndarray, count: int = 3) -> list[dict]:
    """The `count` likeliest distortion types of one image, likeliest first (type 0: none)."""
    types = head_types(len(probabilities))
    order = np.argsort(-probabilities)[:count]
    return [{"type": types[k], "name": type_name(types[k]),
             "probability": round(float(probabilities[k]), 4)} for k in order]


def predict_crops(model, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs for a stack of crops, (crops, columns): a Keras model's through one traced
    graph per model, an exported one's (`nriqa.model.portable`) through its runtime."""
    if hasattr(model, "crop_outputs"):
        forward = model.crop_outputs
    else:
        graph = _graph_function(model)
        forward = lambda batch: graph(batch).numpy()  # noqa: E731
    outputs = [forward(crops[i:i + batch_size].astype(np.float32))
               for i in range(0, len(crops), batch_size)]
    return np.concatenate(outputs).reshape(len(crops), -1)


_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _graph_function(model):
    """A tf.function with a batch-agnostic signature: traced once, about 3x faster than eager
    calls and without predict()'s per-call set-up."""
    if model not in _GRAPHS:
        import tensorflow as tf

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        # A weak reference, so the cached function does not keep its model alive.
        model_ref = weakref.ref(model)
        _GRAPHS[model] = tf.function(lambda crops: model_ref()(crops, training=False),
                                     input_signature=[spec])
    return _GRAPHS[model]
