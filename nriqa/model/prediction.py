"""Scoring images with a trained model: the one function evaluate, the service and the CLI call.

An image's predicted MOS is the mean of the model's scores over a fixed grid of crops
(`nriqa.model.imaging.crops_for_prediction`); crops of many images go through the model in one
batched call.
"""

from __future__ import annotations

import weakref

import numpy as np

from nriqa.model.imaging import crops_for_prediction


def predict_mos(model, images: list[np.ndarray], preprocessing: dict,
                batch_size: int = 256) -> np.ndarray:
    """Predicted MOS for each decoded image (uint8 HxWx3), in order."""
    return predict_images(model, images, preprocessing, batch_size)[0]


def predict_images(model, images: list[np.ndarray], preprocessing: dict, batch_size: int = 256):
    """(MOS, distortion-type probabilities or None) for decoded images; see `score_images`."""
    return score_images(model, [crops_for_prediction(image, preprocessing) for image in images],
                        batch_size)


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
    """The `count` likeliest TID2013 distortion types of one image, likeliest first."""
    from nriqa.data.distortions import DISTORTIONS

    order = np.argsort(-probabilities)[:count]
    return [{"type": int(k) + 1, "name": DISTORTIONS[int(k) + 1].name,
             "probability": round(float(probabilities[k]), 4)} for k in order]


def predict_crops(model, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs for a stack of crops, (crops, columns), through one traced graph per model."""
    forward = _graph_function(model)
    outputs = [forward(crops[i:i + batch_size].astype(np.float32)).numpy()
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



def load_model(model_dir):
    """Transitional: service.py's import until it calls `nriqa.model.bundle.load_bundle`."""
    from nriqa.model.bundle import load_model as load

    return load(model_dir)
