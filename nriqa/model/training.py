"""Training: random crops from the shards, early stopping on validation SRCC, best epoch kept.

Each epoch draws `crops_per_image` random crops (with random horizontal flips) from every
training image, each labelled with its image's MOS (with a labelled folder's images beside
generated ones, `train.dataset_share` sets how much of each epoch is the folder's). Colour or
blur jitter would change the quality the label describes, so there is none. Validation scores
whole images exactly as evaluation and the service do (`nriqa.model.prediction`), and early
stopping watches that SRCC.

`train.strategy` spreads the training over devices: `nriqa.model.distribution`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from nriqa.core.config import ModelConfig, TrainConfig
from nriqa.core.errors import NriqaError
from nriqa.core.imaging import crops_for_prediction
from nriqa.core.metrics import srcc
from nriqa.data.shards import load_split_arrays, read_split
from nriqa.model import efficientnet_lite
from nriqa.model.distribution import (
    DistributableModel,
    chiefs_values,
    distributed_dataset,
    distributed_layers,
    distribution_strategy,
    epoch_batches,
)
from nriqa.model.network import make_model
from nriqa.model.prediction import score_images

LOSSES = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber": "huber"}


def set_threads(threads) -> None:
    """TensorFlow's intra-op and inter-op thread pools, `threads` threads each (`train.threads`;
    None leaves TensorFlow's default, one per core). Float sums are split across the intra-op
    threads, so the count changes the rounding and with it the weights: a fixed count is what
    lets machines with different core counts train the same model.

    TensorFlow reads these once, when its runtime starts (the first op, or creating a
    distribution strategy); so this runs first in `train`, and a runtime already started with
    other pools is an error rather than a silent difference."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise NriqaError(f"train.threads: a positive whole number or null, got {threads!r}")
    if (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads()) == (threads, threads):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:
        raise NriqaError(f"train.threads: TensorFlow's runtime already started in this process "
                         f"with other thread pools, so {threads} cannot apply ({error})") from error


def make_deterministic(seed: int) -> None:
    """Same params, seed and thread count, same machine -> same weights and metrics."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def training_dataset(shard_dir: Path, *, crop_size: int, crops_per_image: int, batch_size: int,
                     seed: int, dataset_share: float | None = None) -> tf.data.Dataset:
    """Batches of `batch_size` images, each as a stack of `crops_per_image` random crops; the
    target is (MOS, distortion type or 0).

    With `dataset_share` and generated images among the dataset's own, each image of an epoch
    is the dataset's with that probability and a generated one otherwise, so that a few hundred
    labelled photos are not drowned by thousands of generated images; the epoch keeps its
    length."""
    def with_target(image, mos, name, distortion):
        return image, tf.stack([mos, tf.cast(distortion, tf.float32)])

    records = read_split(shard_dir, "train")
    splits = pd.read_csv(Path(shard_dir) / "splits.csv")
    train_rows = splits[splits["split"] == "train"]
    # (splits.csv of shards written before the `generated` column: nothing to mix)
    generated = (train_rows.loc[train_rows["generated"], "image"].tolist()
                 if dataset_share is not None and "generated" in splits else [])
    total = len(train_rows)
    mixed = 0 < len(generated) < total  # both kinds present
    if mixed:
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(generated), tf.ones(len(generated), tf.int64)), default_value=0)

        def part(is_generated: int) -> tf.data.Dataset:
            return (records.filter(lambda image, mos, name, distortion:
                                   table.lookup(name) == is_generated)
                    .map(with_target).cache()
                    .shuffle(4096, seed=seed + is_generated, reshuffle_each_iteration=True)
                    .repeat())

        images = tf.data.Dataset.sample_from_datasets(
            [part(0), part(1)], weights=[dataset_share, 1.0 - dataset_share], seed=seed,
            rerandomize_each_iteration=True).take(total)
    else:
        images = records.map(with_target).cache()
    # Stateless crops and flips seeded per element keep the stream identical run to run.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def crop_set(sample, pair):
        image, target = sample
        seeds = tf.random.experimental.stateless_split(pair, crops_per_image)
        crops = tf.map_fn(lambda s: tf.image.stateless_random_flip_left_right(
            tf.image.stateless_random_crop(image, (crop_size, crop_size, 3), seed=s), seed=s[::-1]),
            seeds, fn_output_signature=tf.uint8)
        return tf.cast(crops, tf.float32), target

    stream = tf.data.Dataset.zip((images, seeds))
    if not mixed:  # a mixed stream is shuffled within each part
        stream = stream.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    return (stream
            .map(crop_set, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


class CropSetModel(DistributableModel):
    """Trains the crop model on what an image's score is: the mean over its crops.

    The loss compares that mean with the image's MOS, so crops that show no distortion
    (flat sky in a noisy image) are not forced to predict the image's label on their own.
    With `own_type_scales` (and a per-type MOS head) the per-type MOS outputs follow the
    crop model's columns, so the loss can hold each image's own type to its label.
    Only the wrapped crop model is saved.
    """

    def __init__(self, crop_model: keras.Model, own_type_scales: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.crop_model = crop_model
        self.scored = crop_model
        if own_type_scales:  # the same layers, with the per-type MOS outputs beside
            self.scored = keras.Model(crop_model.input, keras.ops.concatenate(
                [crop_model.output, crop_model.get_layer("mos_per_type").output], axis=-1))

    def call(self, crop_sets, training=False):
        images, crops = keras.ops.shape(crop_sets)[0], keras.ops.shape(crop_sets)[1]
        flat = keras.ops.reshape(crop_sets, (-1, *self.crop_model.input_shape[1:]))
        outputs = self.scored(flat, training=training)
        # Per image: the mean MOS and the mean type logits over its crops, as prediction does.
        columns = self.scored.output_shape[-1]
        return keras.ops.mean(keras.ops.reshape(outputs, (images, crops, columns)), axis=1)


def joint_loss(mos_loss: str, type_weight: float, undistorted_class: bool = False,
               own_type_weight: float = 0.0):
    """MOS loss on column 0 plus `type_weight` x cross-entropy of the type logits, counted only
    for images whose type the head has: TID2013 types 1..N, and with `undistorted_class` also 0,
    an undistorted image (the last class). With `own_type_weight` the output carries the per-type
    MOS outputs after the logits (`CropSetModel`'s `own_type_scales`), and the MOS loss of the
    image's own type's output is added with that weight."""
    mos_fn = keras.losses.get(LOSSES[mos_loss])

    def loss(target, output):
        value = mos_fn(target[:, :1], output[:, :1])
        if output.shape[-1] == 1:
            return value
        types = keras.ops.cast(target[:, 1], "int32")
        classes = (output.shape[-1] - 1) // (2 if own_type_weight else 1)
        if undistorted_class:
            # Type 0 (an undistorted image) is the last class.
            known = keras.ops.cast((types >= 0) & (types < classes), output.dtype)
            index = keras.ops.where(types > 0, types - 1, classes - 1)
        else:
            known = keras.ops.cast((types > 0) & (types <= classes), output.dtype)
            index = keras.ops.maximum(types - 1, 0)
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            index, output[:, 1:1 + classes], from_logits=True)
        value = value + type_weight * known * cross_entropy
        if own_type_weight:
            own = keras.ops.take_along_axis(output[:, 1 + classes:], index[:, None], axis=1)
            value = value + own_type_weight * known * mos_fn(target[:, :1], own)
        return value

    return loss


class BackboneScaledAdam(keras.optimizers.Adam):
    """Adam whose steps on the pretrained backbone's weights are `backbone_scale` times the rest.

    ImageNet weights take small steps or are lost: at the head's learning rate, a few hundred
    steps push the backbone's ReLU6 units into saturation and the model into a constant output.
    Scaling the gradients would not do it, since Adam divides their scale out."""

    def __init__(self, learning_rate, backbone_scale: float = 1.0, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.backbone_scale = backbone_scale

    def build(self, var_list):
        super().build(var_list)
        self._backbone_keys = {self._var_key(variable) for variable in var_list
                               if f"{efficientnet_lite.PREFIX}_" in variable.path}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._backbone_keys:
            learning_rate = learning_rate * self.backbone_scale
        super().update_step(gradient, variable, learning_rate)


class ValidationSRCC(keras.callbacks.Callback):
    """Scores the validation images after every epoch; adds val_srcc and val_rmse to the logs.

    In a multi-worker training every worker takes the chief's values (`chiefs_values`), so that
    early stopping stops them all at the same epoch."""

    def __init__(self, crop_model, images, mos, preprocessing: dict, strategy=None):
        super().__init__()
        self.crop_model = crop_model
        # Cut once, as prediction cuts them (the policy is a no-op on shard images).
        self.crop_sets = [crops_for_prediction(image, preprocessing) for image in images]
        self.mos = mos
        self.chiefs = chiefs_values(strategy)  # None unless multi-worker

    def measure(self) -> dict:
        """This worker's val_srcc and val_rmse of the crop model's current weights."""
        pred = score_images(self.crop_model, self.crop_sets)[0]
        return {"val_srcc": srcc(self.mos, pred),
                "val_rmse": float(np.sqrt(np.mean((self.mos - pred) ** 2)))}

    def on_epoch_end(self, epoch, logs=None):
        values = self.measure()
        if self.chiefs is not None:
            values = self.chiefs(epoch, values)
        logs.update(values)


class WeightAverage(keras.callbacks.Callback):
    """Averages the weights densely along the end of training (SWAD: Cha et al., 2021): a
    snapshot every `every` steps from step `start` on, whose mean replaces the last weights when
    training ends. The mean of nearby solutions sits in a flatter region of the loss, which
    carries better to images unlike the training ones (here: real photographs against the
    generated training images)."""

    def __init__(self, crop_model, start: int, every: int = 10):
        super().__init__()
        self.crop_model, self.start, self.every = crop_model, start, every
        self.step, self.snapshots, self.total = 0, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step < self.start or (self.step - self.start) % self.every:
            return
        weights = self.crop_model.get_weights()
        if self.total is None:
            self.total = [w.astype("float64") for w in weights]
        else:
            for total, w in zip(self.total, weights):
                total += w
        self.snapshots += 1

    def on_train_end(self, logs=None):
        if self.snapshots:  # none when training stopped before the averaging began
            self.crop_model.set_weights([(total / self.snapshots).astype(w.dtype) for total, w
                                         in zip(self.total, self.crop_model.get_weights())])


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_seconds"] = time.perf_counter() - self.start


def train(shard_dir: Path, model_config: ModelConfig, settings: TrainConfig, preprocessing: dict,
          extra_callbacks=(), keep_best_epoch: bool = True):
    """Train from the shards; returns (model, history dict). The model's weights are the mean
    along the end of training with `settings.average_from` (`WeightAverage`), else the best
    epoch's, or the last epoch's with `keep_best_epoch` false, as short screening runs compare them."""
    set_threads(settings.threads)
    strategy = distribution_strategy(settings.strategy)
    if strategy is not None and settings.batch_size % strategy.num_replicas_in_sync:
        raise NriqaError(f"train.batch_size {settings.batch_size} is the global batch: it "
                         f"must divide evenly across the {strategy.num_replicas_in_sync} replicas")
    make_deterministic(settings.seed)
    val_images, val_mos, _, _ = load_split_arrays(shard_dir, "val")
    # A fixed, seeded subset keeps each epoch's validation pass short on large validation sets.
    keep = np.sort(np.random.default_rng(settings.seed).permutation(len(val_mos))[:settings.val_images])
    val_images, val_mos = [val_images[i] for i in keep], val_mos[keep]
    train_mos, train_types = (np.array(column) for column in zip(
        *((m, t) for _, m, _, t in read_split(shard_dir, "train").as_numpy_iterator())))
    # No type head where the training data has no types: it would be trained on nothing.
    if not train_types.any():
        model_config = model_config.model_copy(update={"distortion_types": 0})
    # Variables (model, optimizer) made in the strategy's scope are mirrored on every replica.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = make_model(model_config, initial_mos=float(train_mos.mean()))
        # Only a per-type MOS head has an output per type to hold to its own images' labels.
        per_type_head = model_config.mos_head == "per_type" and model_config.distortion_types
        own_type_weight = settings.own_type_loss_weight if per_type_head else 0.0
        trainer = CropSetModel(model, own_type_scales=bool(own_type_weight))
        # Cosine decay to zero over the planned epochs: late epochs refine instead of jumping around.
        epoch_steps = epoch_batches(len(train_mos), settings.batch_size, strategy)
        learning_rate = keras.optimizers.schedules.CosineDecay(settings.lr, settings.epochs * epoch_steps)
        optimizer = BackboneScaledAdam(learning_rate, backbone_scale=settings.backbone_lr_scale)
        trainer.compile(optimizer=optimizer,
                        loss=joint_loss(settings.loss, settings.type_loss_weight,
                                        model_config.undistorted_class, own_type_weight))
    def make_dataset():
        # One stream through all epochs, `epoch_steps` batches each (fit's steps_per_epoch):
        # epoch k is the stream's k-th pass, as a new iterator per epoch would give it, and
        # Keras never finds an epoch's end by running out of data.
        return training_dataset(shard_dir, crop_size=preprocessing["crop_size"],
                                crops_per_image=settings.crops_per_image,
                                batch_size=settings.batch_size, seed=settings.seed,
                                dataset_share=settings.dataset_share).repeat()

    dataset = make_dataset()
    if strategy is not None:
        trainer.batch_spec = (*dataset.element_spec, tf.TensorSpec([None], tf.float32))
        dataset = distributed_dataset(strategy, make_dataset)
    restore_layers = distributed_layers(model, strategy)
    averaging = settings.average_from is not None
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_srcc", mode="max", patience=settings.patience,
        restore_best_weights=keep_best_epoch and not averaging, verbose=1)
    validation = ValidationSRCC(model, val_images, val_mos, preprocessing, strategy)
    # Order matters: the validation callback writes val_srcc before early stopping reads it.
    callbacks = [EpochTimer(), validation, *extra_callbacks, early_stopping]
    if averaging:
        start = round(settings.average_from * settings.epochs * epoch_steps)
        callbacks.append(WeightAverage(model, start))
    # shuffle=False: the stream is shuffled already; Keras cannot shuffle one (and warns).
    history = trainer.fit(dataset, epochs=settings.epochs, callbacks=callbacks,
                          steps_per_epoch=epoch_steps, shuffle=False, verbose=2)
    restore_layers()  # the saved model is the same as a single device's
    best_epoch = int(np.argmax(history.history["val_srcc"]))
    result = {"history": history.history, "best_epoch": best_epoch + 1,
              "best_val_srcc": float(history.history["val_srcc"][best_epoch]),
              "train_images": int(len(train_mos)), "val_images": int(len(val_mos))}
    if averaging:  # the averaged weights are not any epoch's: measured as the epochs were
        result["averaged_val_srcc"] = validation.measure()["val_srcc"]
    return model, result
