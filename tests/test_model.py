"""The model factory and the shared prediction function."""

import numpy as np
import pytest

from nriqa.core.errors import NriqaError
from nriqa.model.bundle import load_model, save_bundle
from nriqa.model.network import make_model
from nriqa.model.prediction import predict_mos
from tests.helpers import model_config

PREPROCESSING = {"mode": "native", "resize": [32, 32], "crop_size": 32, "stride": 32,
                 "max_crops": 6}


@pytest.fixture(scope="module")
def tiny_model():
    return make_model(model_config(input_size=32, width=0.25, depth=2, head_units=(8,)), initial_mos=4.0)


def blurred_crops(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 32x32 textures blurred at levels 0..3, with MOS 6 - level: a target that local
    contrast normalization keeps (blur changes the texture, not just its contrast)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    levels = np.arange(count) % 4
    crops = np.stack([ndimage.gaussian_filter(rng.uniform(0, 255, (32, 32, 3)),
                                              (0.01 + 0.7 * level, 0.01 + 0.7 * level, 0))
                      for level in levels])
    return crops.astype(np.float32), (6.0 - levels).astype(np.float32)


@pytest.fixture(scope="module")
def trained_model():
    """The tiny network fitted to `blurred_crops`. 480 steps: fewer leave BatchNormalization's
    moving variance near its initial 1 while the activations' is far smaller, so in inference
    every layer shrinks its input and the output barely depends on the crop."""
    import keras

    keras.utils.set_random_seed(0)
    model = make_model(model_config(input_size=32, width=0.25, depth=2, head_units=(8,)), initial_mos=4.5)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    crops, mos = blurred_crops(64, seed=1)
    model.fit(crops, mos, batch_size=4, epochs=30, verbose=0)
    return model


@pytest.mark.parametrize("depth, width", [(1, 0.25), (3, 0.5)])
def test_factory_shapes(depth, width):
    model = make_model(model_config(input_size=48, width=width, depth=depth, head_units=(16, 8)))
    assert model.input_shape == (None, 48, 48, 3)
    assert model.output_shape == (None, 1)
    assert model(np.zeros((2, 48, 48, 3), np.float32)).shape == (2, 1)


def test_type_head_adds_one_logit_per_type():
    model = make_model(model_config(input_size=32, width=0.25, depth=1, head_units=(8,), distortion_types=24))
    assert model.output_shape == (None, 25)


def test_undistorted_class_follows_the_24_types():
    from nriqa.core.taxonomy import head_types
    from nriqa.model.prediction import top_distortions

    model = make_model(model_config(input_size=32, width=0.25, depth=1, head_units=(8,), distortion_types=24, mos_head="per_type", undistorted_class=True))
    assert model.output_shape == (None, 26)
    assert model.get_layer("mos_per_type").output.shape[-1] == 25  # its own MOS too
    assert head_types(25) == [*range(1, 25), 0] and head_types(24) == list(range(1, 25))
    probabilities = np.full(25, 0.01)
    probabilities[24], probabilities[9] = 0.6, 0.16
    assert [(d["type"], d["name"]) for d in top_distortions(probabilities, 2)] == [
        (0, "no distortion"), (10, "JPEG compression")]


def one_likeliest(classes: int, likeliest: int, probability: float) -> np.ndarray:
    """Type probabilities with `probability` at column `likeliest`, the rest shared evenly."""
    probabilities = np.full(classes, (1 - probability) / (classes - 1))
    probabilities[likeliest] = probability
    return probabilities


def test_a_distortion_stands_out_only_when_it_is_likely_and_not_none():
    from nriqa.model.prediction import (
        NO_STANDOUT_NOTE,
        STANDOUT_MIN_PROBABILITY,
        distortion_stands_out,
        likely_distortions,
    )

    jpeg = 9  # column of type 10, JPEG compression
    assert distortion_stands_out(one_likeliest(25, jpeg, 0.6))
    assert distortion_stands_out(one_likeliest(25, jpeg, STANDOUT_MIN_PROBABILITY))
    assert not distortion_stands_out(one_likeliest(25, jpeg, STANDOUT_MIN_PROBABILITY - 0.01))
    # A clean photo: near-uniform guesses, three types at 9% each.
    clean = np.full(25, 0.73 / 22)
    clean[[jpeg, 10, 7]] = 0.09
    assert not distortion_stands_out(clean)
    # The "no distortion" class (type 0, the last column) likeliest, however sure.
    assert not distortion_stands_out(one_likeliest(25, 24, 0.9))
    assert distortion_stands_out(one_likeliest(24, 23, 0.9))  # a head without that class
    # A head of two types: 60% is no better than a guess; 80% stands out.
    assert not distortion_stands_out(one_likeliest(2, 0, 0.6))
    assert distortion_stands_out(one_likeliest(2, 0, 0.8))

    listed, note = likely_distortions(one_likeliest(25, jpeg, 0.6))
    assert listed[0]["type"] == 10 and len(listed) == 3 and note is None
    assert likely_distortions(clean) == ([], NO_STANDOUT_NOTE)
    assert likely_distortions(one_likeliest(25, 24, 0.9)) == ([], "no distortion stands out")
    assert likely_distortions(None) == (None, None)  # a model without the type head


def test_per_type_head_weighs_one_mos_per_type_by_the_type_probabilities():
    import keras

    model = make_model(model_config(input_size=32, width=0.25, depth=1, head_units=(8,), distortion_types=24, mos_head="per_type"), initial_mos=4.0)
    crops = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    inside = keras.Model(model.input, [model.get_layer("type_weights").output,
                                       model.get_layer("mos_per_type").output, model.output])
    weights, per_type, output = (np.asarray(t) for t in inside(crops))
    assert np.allclose(weights, np.exp(output[:, 1:]) / np.exp(output[:, 1:]).sum(1, keepdims=True),
                       atol=1e-5)
    assert np.allclose(output[:, 0], (weights * per_type).sum(axis=1), atol=1e-4)


def test_applications_backbone_shapes():
    model = make_model(model_config(backbone="mobilenet_v2", input_size=32, width=0.35, head_units=(8,)))
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 1)


def pretrained_model(**kwargs):
    return make_model(model_config(**{"backbone": "efficientnet_lite0", "weights": "imagenet",
                                      "input_size": 32, "depth": 4, "head_units": (8,),
                                      "distortion_types": 24, "undistorted_class": True,
                                      "mos_head": "per_type", **kwargs}))


@pytest.mark.parametrize("freeze", [False, True])
def test_pretrained_backbone_keeps_imagenet_statistics(freeze):
    """ImageNet's batch-norm statistics always, and with `freeze` every backbone weight, stay
    as published; the LCN stream beside it (`fusion`) is trained from scratch."""
    from nriqa.model.pretrained import efficientnet_lite0_weights

    model = pretrained_model(depth=5, pooling="stages", freeze=freeze, fusion=True)
    backbone = model.get_layer("efficientnet_lite0")
    state = efficientnet_lite0_weights()
    np.testing.assert_array_equal(backbone.get_layer("effnet_block4_dw_bn").moving_variance,
                                  state["_blocks.4._bn1.running_var"])
    trainable = {w.path.split("/")[-2] for w in model.trainable_weights}
    assert not any("_bn" in name for name in trainable if name.startswith("effnet_"))
    assert any(name.startswith("effnet_") for name in trainable) is not freeze
    assert "block1_dw" in trainable  # the from-scratch stream's first block
    assert model(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 26)


def test_pretrained_model_saves_and_loads(tmp_path):
    model = pretrained_model(depth=3, pooling="stages")
    crops = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    save_bundle(model, tmp_path, {"preprocessing": PREPROCESSING, "mos_range": [0, 9]})
    loaded = load_model(tmp_path)[0]
    np.testing.assert_allclose(np.asarray(loaded(crops)), np.asarray(model(crops)), atol=1e-5)


def test_backbone_steps_scale_with_backbone_lr_scale():
    import keras

    from nriqa.model.training import BackboneScaledAdam

    model = pretrained_model(depth=2)
    before = [w.numpy() for w in model.trainable_weights]
    model.compile(optimizer=BackboneScaledAdam(1e-2, backbone_scale=0.0), loss="mse")
    crops = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    model.fit(crops, np.ones((8, 26), np.float32), epochs=2, verbose=0)
    moved = {w.path: not np.array_equal(b, w.numpy())
             for w, b in zip(model.trainable_weights, before)}
    assert not any(v for path, v in moved.items() if "effnet_" in path)
    assert all(v for path, v in moved.items() if path.startswith("head1"))
    assert isinstance(model.optimizer, keras.optimizers.Adam)


@pytest.mark.parametrize("kwargs, field", [
    ({"backbone": "resnet"}, "model.backbone"),
    ({"backbone": "efficientnet_lite0", "depth": 17}, "model.depth"),
    ({"backbone": "efficientnet_lite0", "pooling": "corners"}, "model.pooling"),
    ({"weights": "imagenet"}, "model.weights"),
    ({"input_norm": "zscore"}, "model.input_norm"),
    ({"mos_head": "mixture", "distortion_types": 24}, "model.mos_head"),
    ({"undistorted_class": True, "distortion_types": 5}, "model.undistorted_class"),
])
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(NriqaError, match=field):
        make_model(model_config(**kwargs))


def test_initial_output_is_the_mean_mos():
    """A flat crop gives no features, so an untrained model outputs exactly its starting MOS."""
    model = make_model(model_config(input_size=32, width=0.25, depth=2, head_units=(8,)), initial_mos=6.5)
    flat = np.full((2, 32, 32, 3), 128.0, np.float32)
    np.testing.assert_allclose(np.asarray(model(flat)), 6.5, rtol=0, atol=1e-6)


def test_model_learns_a_simple_target(trained_model):
    from scipy.stats import spearmanr

    crops, mos = blurred_crops(32, seed=2)  # unseen textures
    predicted = np.asarray(trained_model.predict(crops, verbose=0))[:, 0]
    assert spearmanr(predicted, mos)[0] > 0.8
    by_level = [predicted[mos == value].mean() for value in (6.0, 5.0, 4.0, 3.0)]
    assert np.all(np.diff(by_level) < 0), by_level  # sharper scores higher, level by level


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


def test_saved_model_loads_with_its_preprocessing(trained_model, tmp_path):
    """Trained weights and BatchNormalization statistics survive the round trip exactly."""
    save_bundle(trained_model, tmp_path, {"preprocessing": PREPROCESSING, "mos_range": [0.0, 9.0]})
    loaded, info = load_model(tmp_path)
    assert info["preprocessing"] == PREPROCESSING
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8),
              blurred_crops(4, seed=3)[0][3].astype(np.uint8)]
    expected = predict_mos(trained_model, images, PREPROCESSING)
    assert abs(expected[0] - expected[1]) > 0.1  # the scores depend on the image
    np.testing.assert_allclose(predict_mos(loaded, images, info["preprocessing"]), expected,
                               rtol=0, atol=1e-6)

