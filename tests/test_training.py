"""Training's settings beyond the seed: the thread count (`train.threads`), which decides the weights,
how much of an epoch a labelled folder gets (`train.dataset_share`), and the weights averaged along
the end of training (`train.average_from`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.helpers import (
    PROJECT,
    TINY_NETWORK,
    TINY_PARAMS,
    config,
    merge,
    tool_env,
    write_tiny_shards,
)

# The stage's own imports first (stages.train: tracking, imaging, model, training, and the quiet
# TensorFlow start that lists devices), then a real training with train.threads = 1.
THREADS_SCRIPT = """
import json, sys
from pathlib import Path
import yaml
import stages.train  # noqa: F401  everything the train stage imports before it trains
import tensorflow as tf
from nriqa.core.config import parse_config
from nriqa.core.imaging import preprocessing_config
from nriqa.model.training import train
config = parse_config(json.loads(sys.argv[2]))
train(Path(sys.argv[1]), config.model, config.train, preprocessing_config(config))
started = (tf.config.threading.get_intra_op_parallelism_threads(),
           tf.config.threading.get_inter_op_parallelism_threads())
try:  # refused once the runtime has started: so it started with the pools read above
    tf.config.threading.set_intra_op_parallelism_threads(started[0] + 1)
    frozen = False
except RuntimeError:
    frozen = True
print("THREADS", json.dumps({"started": started, "frozen": frozen}))
"""


@pytest.mark.integration  # starts a Python process
def test_train_threads_reach_tensorflow_before_its_runtime_starts(tmp_path):

    shards = write_tiny_shards(tmp_path / "shards", train=8, val=4)
    params = merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), TINY_PARAMS)
    params["train"].update(epochs=1, threads=1)
    result = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(shards), json.dumps(params)],
                            cwd=PROJECT, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("THREADS "))
    assert json.loads(line.removeprefix("THREADS ")) == {"started": [1, 1], "frozen": True}


def test_default_threads_param_is_two():

    assert yaml.safe_load((PROJECT / "params.yaml").read_text())["train"]["threads"] == 2


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2", True])
def test_bad_threads_name_the_field(threads):
    from nriqa.core.errors import NriqaError
    from nriqa.model.training import set_threads

    with pytest.raises(NriqaError, match="train.threads"):
        set_threads(threads)


@pytest.mark.parametrize("undistorted_class", [False, True])
def test_type_loss_counts_an_undistorted_image_only_with_its_class(undistorted_class):
    """Type 0 (undistorted) is the last class with `model.undistorted_class`; without it, type 0
    means 'no type' and adds no cross-entropy."""
    import keras

    from nriqa.model.training import joint_loss

    classes = 24 + undistorted_class
    logits = np.zeros((3, classes), np.float32)
    logits[0, 4] = logits[1, classes - 1] = 5.0     # type 5, and the last class
    output = np.concatenate([np.full((3, 1), 4.0, np.float32), logits], axis=1)
    target = np.array([[4.0, 5], [4.0, 0], [4.0, 7]], np.float32)  # MOS exact: type loss only
    loss = np.asarray(joint_loss("mse", 1.0, undistorted_class)(target, output))
    confident = -np.log(np.exp(5.0) / (np.exp(5.0) + classes - 1))
    uniform = np.log(classes)
    assert loss[0] == pytest.approx(confident, rel=1e-5)
    assert loss[1] == pytest.approx(confident if undistorted_class else 0.0, abs=1e-6)
    assert loss[2] == pytest.approx(uniform, rel=1e-5)
    assert keras.ops.convert_to_numpy(loss).shape == (3,)


def test_own_type_loss_holds_each_image_to_its_own_types_scale():
    """With `own_type_loss_weight` the per-type MOS outputs follow the logits, and the MOS loss of
    the image's own type's output is added; the other types' outputs add nothing."""
    from nriqa.model.training import joint_loss

    classes = 25  # 24 types and the undistorted class
    logits = np.zeros((3, classes), np.float32)
    per_type = np.full((3, classes), 9.0, np.float32)  # 5 off everywhere but...
    per_type[0, 4] = 3.0                                # type 5's output for the first image: 1 off
    per_type[1, classes - 1] = 4.0                      # the undistorted class's, exact
    output = np.concatenate([np.full((3, 1), 4.0, np.float32), logits, per_type], axis=1)
    target = np.array([[4.0, 5], [4.0, 0], [4.0, 7]], np.float32)
    own_only = np.asarray(joint_loss("mse", 0.0, True, own_type_weight=0.5)(target, output))
    np.testing.assert_allclose(own_only, [0.5, 0.0, 12.5], rtol=1e-6)
    cross_entropy_only = np.asarray(joint_loss("mse", 1.0, True)(target, output[:, :1 + classes]))
    both = np.asarray(joint_loss("mse", 1.0, True, own_type_weight=0.5)(target, output))
    np.testing.assert_allclose(both - cross_entropy_only, own_only, rtol=1e-5)
    # Without the undistorted class, type 0 has no class and so no scale of its own.
    no_class = joint_loss("mse", 0.0, False, own_type_weight=0.5)(
        target[1:2], np.concatenate([output[1:2, :classes], per_type[1:2, :-1]], axis=1))
    assert float(np.asarray(no_class)[0]) == 0.0


def test_crop_set_model_puts_the_per_type_outputs_after_the_logits():
    from nriqa.model.network import make_model
    from nriqa.model.training import CropSetModel

    per_type_head = {"distortion_types": 24, "undistorted_class": True, "mos_head": "per_type"}
    crop_model = make_model(config({"model": {**TINY_NETWORK, **per_type_head}}).model)
    # One crop per image: the image's columns are its crop's.
    crop_sets = np.random.default_rng(0).uniform(0, 255, (2, 1, 32, 32, 3)).astype(np.float32)
    plain = np.asarray(CropSetModel(crop_model)(crop_sets))
    scored = np.asarray(CropSetModel(crop_model, own_type_scales=True)(crop_sets))
    assert plain.shape == (2, 26) and scored.shape == (2, 51)
    np.testing.assert_allclose(scored[:, :26], plain, rtol=1e-5, atol=1e-5)
    # Column 0 is the mixture of the per-type outputs by the type probabilities.
    assert np.all(scored[:, 26:].min(axis=1) <= scored[:, 0] + 1e-4)
    assert np.all(scored[:, 0] <= scored[:, 26:].max(axis=1) + 1e-4)



def test_dataset_share_sets_how_much_of_an_epoch_the_labelled_folder_gets(tmp_path):
    import pandas as pd

    from nriqa.model.training import training_dataset

    shards = write_tiny_shards(tmp_path / "shards", train=24, val=0)
    splits = pd.read_csv(shards / "splits.csv")
    # The blurred half stands for the generated images, the noisy half for the folder's own.
    splits["generated"] = splits["distortion"] == 8
    splits.to_csv(shards / "splits.csv", index=False)

    def epochs(share, count=10):
        dataset = training_dataset(shards, crop_size=32, crops_per_image=2, batch_size=4, seed=5,
                                   dataset_share=share)
        return [np.concatenate([targets[:, 1].numpy() for _, targets in dataset])
                for _ in range(count)]

    for epoch in epochs(None, 2):  # in proportion: every image once
        assert len(epoch) == 24 and (epoch == 1).sum() == 12
    shared = epochs(0.8)
    assert all(len(epoch) == 24 for epoch in shared)  # the epoch keeps its length
    own = np.mean(np.concatenate(shared) == 1)
    assert 0.7 < own < 0.9, own
    np.testing.assert_array_equal(np.concatenate(shared), np.concatenate(epochs(0.8)))


@pytest.mark.parametrize("share", [0, 1.0, 1.5, "half"])
def test_bad_dataset_share_names_the_field(tmp_path, share):
    from nriqa.core.errors import NriqaError

    with pytest.raises(NriqaError, match="train.dataset_share: Input should be"):
        config({"train": {"dataset_share": share}})


def test_weight_average_keeps_the_mean_of_its_snapshots():
    import keras

    from nriqa.model.training import WeightAverage

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    average = WeightAverage(model, start=2, every=2)
    for step in range(1, 8):  # snapshots at steps 2, 4 and 6
        model.set_weights([np.full((2, 1), float(step)), np.full((1,), -float(step))])
        average.on_train_batch_end(step - 1)
    average.on_train_end()
    np.testing.assert_array_equal(model.get_weights()[0], np.full((2, 1), 4.0))
    np.testing.assert_array_equal(model.get_weights()[1], np.full((1,), -4.0))


def test_train_returns_the_weights_averaged_from_average_from_on(tmp_path):
    import keras

    from nriqa.core.imaging import preprocessing_config
    from nriqa.model.training import train

    class Weights(keras.callbacks.Callback):  # each step's weights, as the average sees them
        def __init__(self):
            super().__init__()
            self.steps = []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(self.model.crop_model.get_weights())

    shards = write_tiny_shards(tmp_path / "shards", train=24, val=8)
    settings = config(merge(TINY_PARAMS, {"model": TINY_NETWORK,
                                          "train": {"epochs": 4, "average_from": 0.5,
                                                    "threads": None}}))
    seen = Weights()
    model, result = train(shards, settings.model, settings.train, preprocessing_config(settings),
                          extra_callbacks=[seen])
    # 24 images in batches of 4: 6 steps an epoch, 24 in all; snapshots at steps 12 and 22.
    assert len(seen.steps) == 24
    expected = [(a + b) / 2 for a, b in zip(seen.steps[11], seen.steps[21])]
    for weight, mean in zip(model.get_weights(), expected):
        np.testing.assert_allclose(weight, mean, rtol=1e-6, atol=1e-7)
    assert not np.allclose(model.get_weights()[0], seen.steps[-1][0])
    assert isinstance(result["averaged_val_srcc"], float)  # measured on the averaged weights


@pytest.mark.parametrize("start", [-0.1, 1.0, "half"])
def test_bad_average_from_names_the_field(start):
    from nriqa.core.errors import NriqaError

    with pytest.raises(NriqaError, match="train.average_from: Input should be"):
        config({"train": {"average_from": start}})
