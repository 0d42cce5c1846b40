"""The model factory and the shared prediction function."""

import numpy as np
import pytest

from nriqa.errors import NriqaError
from nriqa.model.network import make_model
from nriqa.model.prediction import predict_mos

PREPROCESSING = {"mode": "native", "resize": [32, 32], "crop_size": 32, "stride": 32,
                 "max_crops": 6}


@pytest.fixture(scope="module")
def tiny_model():
    return make_model(input_size=32, width=0.25, depth=2, head_units=(8,), initial_mos=4.0)


@pytest.mark.parametrize("depth, width", [(1, 0.25), (3, 0.5)])
def test_factory_shapes(depth, width):
    model = make_model(input_size=48, width=width, depth=depth, head_units=(16, 8))
    assert model.input_shape == (None, 48, 48, 3)
    assert model.output_shape == (None, 1)
    assert model(np.zeros((2, 48, 48, 3), np.float32)).shape == (2, 1)


def test_type_head_adds_one_logit_per_type():
    model = make_model(input_size=32, width=0.25, depth=1, head_units=(8,), distortion_types=24)
    assert model.output_shape == (None, 25)


def test_per_type_head_weighs_one_mos_per_type_by_the_type_probabilities():
    import keras

    model = make_model(input_size=32, width=0.25, depth=1, head_units=(8,), distortion_types=24,
                       mos_head="per_type", initial_mos=4.0)
    crops = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    inside = keras.Model(model.input, [model.get_layer("type_weights").output,
                                       model.get_layer("mos_per_type").output, model.output])
    weights, per_type, output = (np.asarray(t) for t in inside(crops))
    assert np.allclose(weights, np.exp(output[:, 1:]) / np.exp(output[:, 1:]).sum(1, keepdims=True),
                       atol=1e-5)
    assert np.allclose(output[:, 0], (weights * per_type).sum(axis=1), atol=1e-4)


def test_applications_backbone_shapes():
    model = make_model(backbone="mobilenet_v2", input_size=32, width=0.35, head_units=(8,))
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 1)


@pytest.mark.parametrize("kwargs, field", [
    ({"backbone": "resnet"}, "model.backbone"),
    ({"weights": "imagenet"}, "model.weights"),
    ({"input_norm": "zscore"}, "model.input_norm"),
    ({"mos_head": "mixture", "distortion_types": 24}, "model.mos_head"),
])
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(NriqaError, match=field):
        make_model(**kwargs)


def test_initial_output_is_the_mean_mos(tiny_model):
    assert np.allclose(tiny_model(np.zeros((1, 32, 32, 3), np.float32)), 4.0, atol=1.0)


def test_prediction_on_odd_sizes(tiny_model):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20, 25, 3), dtype=np.uint8),     # smaller than a crop
              rng.integers(0, 256, (200, 60, 3), dtype=np.uint8),    # portrait
              np.repeat(rng.integers(0, 256, (50, 50, 1), dtype=np.uint8), 3, axis=2)]  # gray
    scores = predict_mos(tiny_model, images, PREPROCESSING)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    # One image alone scores the same as inside a batch: no cross-talk between images.
    assert np.isclose(predict_mos(tiny_model, images[1:2], PREPROCESSING)[0], scores[1], atol=1e-5)
    assert predict_mos(tiny_model, [], PREPROCESSING).shape == (0,)
