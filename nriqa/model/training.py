"""Training: random crops from the shards, early stopping on validation SRCC, best epoch kept.

Each epoch draws `crops_per_image` random crops (with random horizontal flips) from every
training image, each labelled with its image's MOS. Colour or blur jitter would change the
quality the label describes, so there is none. Validation scores whole images exactly as
evaluation and the service do (`nriqa.model.prediction`), and early stopping watches that SRCC.

`train.strategy` spreads the training over devices with `tf.distribute`: `mirrored` over this
machine's GPUs (`MirroredStrategy`), `multi_worker` over machines (`MultiWorkerMirroredStrategy`,
the cluster and this process's place in it read from `TF_CONFIG`). `train.batch_size` is the
global batch either way: each step's batch is split image by image across the replicas (an
image's crops stay together, so the crop-set loss is unchanged), each replica's mean loss is
scaled by 1 / replicas by Keras and the gradients are summed, i.e. averaged over the global batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from nriqa.errors import NriqaError
from nriqa.evaluation.metrics import srcc
from nriqa.model.imaging import crops_for_prediction
from nriqa.model.network import model_from_params
from nriqa.model.prediction import score_images
from nriqa.data.shards import load_split_arrays, read_split

LOSSES = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber": "huber"}
STRATEGIES = ("none", "mirrored", "multi_worker")


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


def cluster_task(environ=os.environ) -> tuple[str, int, bool]:
    """(task type, task index, whether the cluster has a `chief` task) from TF_CONFIG; a
    process without it is ("worker", 0, False)."""
    if not environ.get("TF_CONFIG"):
        return "worker", 0, False
    try:
        config = json.loads(environ["TF_CONFIG"])
        task = config["task"]
        return str(task["type"]), int(task["index"]), "chief" in config["cluster"]
    except (ValueError, KeyError, TypeError) as error:
        raise NriqaError(f"TF_CONFIG: not a cluster and task as tf.distribute reads them "
                         f"({error!r}): {environ['TF_CONFIG']}") from error


def is_chief(params: dict, environ=os.environ) -> bool:
    """Whether this process writes the outputs (model, history, MLflow run): always, except in
    a multi_worker training, where only the chief does (the `chief` task if the cluster names
    one, else worker 0), as tf.distribute decides it."""
    if params["train"]["strategy"] != "multi_worker":
        return True
    kind, index, has_chief = cluster_task(environ)
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def check_strategy(name) -> None:
    """A `train.strategy` that cannot run fails here, before any tracking or training starts."""
    if name not in STRATEGIES and name is not None:
        raise NriqaError(f"train.strategy: one of {' | '.join(STRATEGIES)}, got {name!r}")
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise NriqaError("train.strategy multi_worker: TF_CONFIG is not set; it names every "
                             "worker's host:port and this one's index (README: Running as a team)")
        cluster_task()  # a malformed TF_CONFIG fails here, clearly


def distribution_strategy(name):
    """The tf.distribute strategy for `train.strategy`, or None for a plain single-device run.
    Created right after the thread pools are set and before any other op: creating it starts
    TensorFlow's runtime (and, for multi_worker, this task's server)."""
    check_strategy(name)
    if name in (None, "none"):
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def make_deterministic(seed: int) -> None:
    """Same params, seed and thread count, same machine -> same weights and metrics."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def training_dataset(shard_dir: Path, *, crop_size: int, crops_per_image: int, batch_size: int,
                     seed: int) -> tf.data.Dataset:
    """Batches of `batch_size` images, each as a stack of `crops_per_image` random crops; the
    target is (MOS, distortion type or 0)."""
    def with_target(image, mos, name, distortion):
        return image, tf.stack([mos, tf.cast(distortion, tf.float32)])

    images = read_split(shard_dir, "train").map(with_target).cache()
    # Stateless crops and flips seeded per element keep the stream identical run to run.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def crop_set(sample, pair):
        image, target = sample
        seeds = tf.random.experimental.stateless_split(pair, crops_per_image)
        crops = tf.map_fn(lambda s: tf.image.stateless_random_flip_left_right(
            tf.image.stateless_random_crop(image, (crop_size, crop_size, 3), seed=s), seed=s[::-1]),
            seeds, fn_output_signature=tf.uint8)
        return tf.cast(crops, tf.float32), target

    return (tf.data.Dataset.zip((images, seeds))
            .shuffle(4096, seed=seed, reshuffle_each_iteration=True)
            .map(crop_set, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def distributed_dataset(strategy, make_dataset):
    """`make_dataset()`'s global batches, split image by image across the replicas, each image
    with a loss weight.

    Every worker builds the same global stream (same seeds, same order: the batches a single
    device trains on) and keeps its replicas' rows: of a batch of n images, replica r of R gets
    rows [r n / R, (r + 1) n / R) (rounded down), i.e. n / R each for a full batch, so no two
    replicas see the same image in a step and every worker runs the same number of steps.

    Keras takes each replica's mean loss over its own rows and divides it by R, which is the
    global batch's mean only when the replicas hold equally many rows. A final partial batch
    can split unevenly, so each image carries the weight R x (its replica's rows) / n: 1.0
    exactly in a full batch, and in a partial one the weighted replica means add up to the
    batch's mean, as on one device. A final batch of fewer images than replicas would leave a
    replica with none, which the model cannot take (its padding refuses an empty batch): it is
    skipped, so such a run trains on up to R - 1 fewer images per epoch than one device does.
    The split is explicit rather than TensorFlow's auto-sharding, so that it and the weights
    are this function's and nothing else's."""
    def per_worker(context):
        replicas = context.num_replicas_in_sync
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def replica_rows(images, targets):
            size = tf.shape(images)[0]
            bounds = tf.range(replicas + 1) * size // replicas

            def rows(replica):
                start, end = bounds[replica], bounds[replica + 1]
                weight = tf.cast(replicas * (end - start), tf.float32) / tf.cast(size, tf.float32)
                return images[start:end], targets[start:end], tf.fill([end - start], weight)

            return tf.data.Dataset.range(first, first + local).map(
                lambda replica: rows(tf.cast(replica, tf.int32)))

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return (make_dataset()
                .filter(lambda images, targets: tf.shape(images)[0] >= replicas)
                .flat_map(replica_rows)
                .with_options(options))

    return strategy.distribute_datasets_from_function(per_worker)


class CropSetModel(keras.Model):
    """Trains the crop model on what an image's score is: the mean over its crops.

    The loss compares that mean with the image's MOS, so crops that show no distortion
    (flat sky in a noisy image) are not forced to predict the image's label on their own.
    Only the wrapped crop model is saved.
    """

    def __init__(self, crop_model: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.crop_model = crop_model

    # Set for a distributed training: the spec of a batch (images, targets, loss weights).
    batch_spec = None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy, Keras 3.15 builds the model from the first batch of the training
        # iterator, then resets it: one extra pass, so the first epoch would see the stream's
        # second shuffle, not the first as on a single device. It also merges that batch with
        # `strategy.reduce("MEAN", (x, y))`, which MultiWorkerMirroredStrategy refuses for a
        # tuple ("Attempt to convert a value (PerReplica ...) to a Tensor", keras-team/keras
        # #20585). Only shapes and dtypes are needed: the dataset's spec gives them.
        if iterator is not None and self.batch_spec is not None:
            iterator, data_batch = None, self.batch_spec
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        logs = super().train_step(data)
        if _multi_worker(self.distribute_strategy):
            # Keras 3.15 then averages each log across workers with `strategy.reduce("MEAN",
            # value, axis=0)`, which fails on a scalar ("Invalid reduction dimension 0 for input
            # with 0 dimensions"). The logs are metrics, already summed across replicas, so
            # every replica holds the same value: as a 1-element vector it averages to itself.
            logs = {key: keras.ops.reshape(value, (1,)) for key, value in logs.items()}
        return logs

    def call(self, crop_sets, training=False):
        images, crops = keras.ops.shape(crop_sets)[0], keras.ops.shape(crop_sets)[1]
        flat = keras.ops.reshape(crop_sets, (-1, *self.crop_model.input_shape[1:]))
        outputs = self.crop_model(flat, training=training)
        # Per image: the mean MOS and the mean type logits over its crops, as prediction does.
        columns = self.crop_model.output_shape[-1]
        return keras.ops.mean(keras.ops.reshape(outputs, (images, crops, columns)), axis=1)


def joint_loss(mos_loss: str, type_weight: float, undistorted_class: bool = False):
    """MOS loss on column 0 plus `type_weight` x cross-entropy of the type logits, counted only
    for images whose type the head has: TID2013 types 1..N, and with `undistorted_class` also 0,
    an undistorted image (the last class)."""
    mos_fn = keras.losses.get(LOSSES[mos_loss])

    def loss(target, output):
        value = mos_fn(target[:, :1], output[:, :1])
        if output.shape[-1] == 1:
            return value
        types = keras.ops.cast(target[:, 1], "int32")
        classes = output.shape[-1] - 1
        if undistorted_class:
            # Type 0 (an undistorted image) is the last class.
            known = keras.ops.cast((types >= 0) & (types < classes), output.dtype)
            index = keras.ops.where(types > 0, types - 1, classes - 1)
        else:
            known = keras.ops.cast((types > 0) & (types <= classes), output.dtype)
            index = keras.ops.maximum(types - 1, 0)
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            index, output[:, 1:], from_logits=True)
        return value + type_weight * known * cross_entropy

    return loss


class ValidationSRCC(keras.callbacks.Callback):
    """Scores the validation images after every epoch; adds val_srcc and val_rmse to the logs.

    In a multi-worker training every worker scores the same images with the same (mirrored)
    weights, so they compute the same values; still, early stopping must stop every worker at
    the same epoch or the others wait forever in their next collective op, so each worker takes
    the chief's values (an all-reduce in which only the chief adds non-zeros: exact) and says
    so on stderr if its own differed."""

    def __init__(self, crop_model, images, mos, preprocessing: dict, strategy=None):
        super().__init__()
        self.crop_model = crop_model
        # Cut once, as prediction cuts them (the policy is a no-op on shard images).
        self.crop_sets = [crops_for_prediction(image, preprocessing) for image in images]
        self.mos = mos
        self.strategy = strategy if _multi_worker(strategy) else None
        if self.strategy is not None:
            # One all-reduce (a graph: eager collectives are slow and warn each time).
            self._sum = tf.function(lambda values: strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None))

    def on_epoch_end(self, epoch, logs=None):
        pred = score_images(self.crop_model, self.crop_sets)[0]
        values = [srcc(self.mos, pred), float(np.sqrt(np.mean((self.mos - pred) ** 2)))]
        if self.strategy is not None:
            values = self._chiefs(epoch, values)
        logs["val_srcc"], logs["val_rmse"] = values

    def _chiefs(self, epoch, values):
        chief = self.strategy.extended.should_checkpoint  # True on the chief only
        reduced = self._sum(tf.constant(values if chief else [0.0, 0.0], tf.float64))
        chiefs = [float(v) for v in reduced.numpy()]
        if chiefs != values:
            print(f"{self.strategy.cluster_resolver.task_type} "
                  f"{self.strategy.cluster_resolver.task_id}, epoch {epoch + 1}: own "
                  f"val_srcc/val_rmse {values} differ from the chief's {chiefs}; "
                  f"using the chief's", file=sys.stderr)
        return chiefs


class _GlobalBatchDropout(keras.layers.Dropout):
    """Dropout whose masks are the single device's: a Dropout layer's class while a training
    runs on several replicas (`_distributed_layers`).

    Keras draws dropout masks from a seed that is mirrored like the weights, so every replica
    would draw the same masks for its own rows (replica 2's first image, the mask of replica
    1's first image). Here each replica places its rows where they sit in the global batch
    (the offsets from an all-gather of the replicas' row counts), draws the mask of the whole
    global batch with that seed, as one device does, and keeps its rows' part: every image gets
    the mask it would get on one device."""

    def call(self, inputs, training=False):
        context = tf.distribute.get_replica_context()
        if not (training and self.rate > 0) or context is None or context.num_replicas_in_sync == 1:
            return super().call(inputs, training=training)
        rows = tf.shape(inputs)[0]
        counts = context.all_gather(tf.reshape(rows, [1]), axis=0)
        start = tf.reduce_sum(counts[:context.replica_id_in_sync_group])
        padding = [[start, tf.reduce_sum(counts) - start - rows]] + [[0, 0]] * (len(inputs.shape) - 1)
        return super().call(tf.pad(inputs, padding), training=True)[start:start + rows]


def _distributed_layers(model, strategy) -> Callable[[], None]:
    """With several replicas, for the training only: batch norm's batch statistics over the
    whole global batch (an all-reduce per layer and step) instead of each replica's part, and
    dropout masks drawn for the global batch (`_GlobalBatchDropout`). So each step computes
    what one device computes, and the moving averages stay equal on every worker (Keras
    updates them on each replica alone: unsynchronized, workers end with different ones and
    score validation differently). Returns a function that puts the layers back, so the
    saved model is a plain one."""
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return lambda: None
    undo, pending = [], [model]
    while pending:
        layer = pending.pop()
        pending.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            undo.append(lambda layer=layer: setattr(layer, "synchronized", False))
        elif type(layer) is keras.layers.Dropout:
            layer.__class__ = _GlobalBatchDropout
            undo.append(lambda layer=layer: setattr(layer, "__class__", keras.layers.Dropout))

    def restore():
        for step in undo:
            step()

    return restore


def _multi_worker(strategy) -> bool:
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_seconds"] = time.perf_counter() - self.start


def train(shard_dir: Path, params: dict, preprocessing: dict, extra_callbacks=(),
          keep_best_epoch: bool = True):
    """Train from the shards; returns (model with the best epoch's weights, or the last
    epoch's with `keep_best_epoch` false, as short screening runs compare them; history dict)."""
    train_params = params["train"]
    set_threads(train_params["threads"])
    strategy = distribution_strategy(train_params["strategy"])
    if strategy is not None and int(train_params["batch_size"]) % strategy.num_replicas_in_sync:
        raise NriqaError(f"train.batch_size {train_params['batch_size']} is the global batch: it "
                         f"must divide evenly across the {strategy.num_replicas_in_sync} replicas")
    make_deterministic(int(train_params["seed"]))
    val_images, val_mos, _, _ = load_split_arrays(shard_dir, "val")
    # A fixed, seeded subset keeps each epoch's validation pass short on large validation sets.
    keep = np.sort(np.random.default_rng(int(train_params["seed"])).permutation(len(val_mos))
                   [:int(train_params["val_images"])])
    val_images, val_mos = [val_images[i] for i in keep], val_mos[keep]
    train_mos, train_types = (np.array(column) for column in zip(
        *((m, t) for _, m, _, t in read_split(shard_dir, "train").as_numpy_iterator())))
    # No type head where the training data has no types: it would be trained on nothing.
    model_params = {**params["model"],
                    "distortion_types": params["model"]["distortion_types"] if train_types.any() else 0}
    # Variables (model, optimizer) made in the strategy's scope are mirrored on every replica.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = model_from_params(model_params, initial_mos=float(train_mos.mean()))
        trainer = CropSetModel(model)
        # Cosine decay to zero over the planned epochs: late epochs refine instead of jumping around.
        batches = int(np.ceil(len(train_mos) / int(train_params["batch_size"])))
        if (strategy is not None and
                0 < len(train_mos) % int(train_params["batch_size"]) < strategy.num_replicas_in_sync):
            batches -= 1  # distributed_dataset skips a final batch smaller than the replicas
        steps = int(train_params["epochs"]) * batches
        learning_rate = keras.optimizers.schedules.CosineDecay(float(train_params["lr"]), steps)
        trainer.compile(optimizer=keras.optimizers.Adam(learning_rate),
                        loss=joint_loss(train_params["loss"], float(train_params["type_loss_weight"]),
                                        bool(model_params["undistorted_class"])))
    def make_dataset():
        return training_dataset(shard_dir, crop_size=preprocessing["crop_size"],
                                crops_per_image=int(train_params["crops_per_image"]),
                                batch_size=int(train_params["batch_size"]),
                                seed=int(train_params["seed"]))

    dataset = make_dataset()
    if strategy is not None:
        trainer.batch_spec = (*dataset.element_spec, tf.TensorSpec([None], tf.float32))
        dataset = distributed_dataset(strategy, make_dataset)
    restore_layers = _distributed_layers(model, strategy)
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_srcc", mode="max", patience=int(train_params["patience"]),
        restore_best_weights=keep_best_epoch, verbose=1)
    # Order matters: the validation callback writes val_srcc before early stopping reads it.
    callbacks = [EpochTimer(), ValidationSRCC(model, val_images, val_mos, preprocessing, strategy),
                 *extra_callbacks, early_stopping]
    history = trainer.fit(dataset, epochs=int(train_params["epochs"]), callbacks=callbacks,
                          verbose=2)
    restore_layers()  # the saved model is the same as a single device's
    best_epoch = int(np.argmax(history.history["val_srcc"]))
    return model, {"history": history.history, "best_epoch": best_epoch + 1,
                   "best_val_srcc": float(history.history["val_srcc"][best_epoch]),
                   "train_images": int(len(train_mos)), "val_images": int(len(val_mos))}
