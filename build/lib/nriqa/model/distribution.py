"""Training across devices with `tf.distribute`, computing what one device computes.

`train.strategy` picks the strategy: `mirrored` over this machine's GPUs (`MirroredStrategy`),
`multi_worker` over machines (`MultiWorkerMirroredStrategy`, the cluster and this process's
place in it read from `TF_CONFIG`). `train.batch_size` is the global batch either way: each
step's batch is split image by image across the replicas (an image's crops stay together, so
the crop-set loss is unchanged), each replica's mean loss is scaled by 1 / replicas by Keras and
the gradients are summed, i.e. averaged over the global batch. Batch norm and dropout work over
the global batch during the training, and every worker takes the chief's validation scores.

Parts of this work around Keras 3.15.1's distributed fit through its private API
(`Model._maybe_symbolic_build`, `strategy.extended._in_multi_worker_mode`, a Dropout layer's
class swapped at run time): after any Keras upgrade, re-test with tests/test_distributed.py.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import keras
import tensorflow as tf

from nriqa.core.errors import NriqaError

STRATEGIES = ("none", "mirrored", "multi_worker")


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


def is_chief(strategy: str, environ=os.environ) -> bool:
    """Whether this process writes the outputs (model, history, MLflow run): always, except in
    a multi_worker training, where only the chief does (the `chief` task if the cluster names
    one, else worker 0), as tf.distribute decides it."""
    if strategy != "multi_worker":
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
                             "worker's host:port and this one's index (docs/team.md)")
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


def epoch_batches(images: int, batch_size: int, strategy) -> int:
    """The steps of an epoch over `images` images: the batches, less a final batch that
    `distributed_dataset` skips for having fewer images than replicas."""
    batches = int(-(-images // batch_size))
    if strategy is not None and 0 < images % batch_size < strategy.num_replicas_in_sync:
        batches -= 1
    return batches


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


class DistributableModel(keras.Model):
    """A keras.Model whose `fit` works under every strategy here, on Keras 3.15."""

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


def chiefs_values(strategy) -> Callable[[int, dict], dict] | None:
    """For a multi-worker training, a function (epoch, this worker's {name: value}) -> the
    chief's values under the same names; None otherwise.

    Every worker scores validation with the same (mirrored) weights, so they compute the same
    values; still, early stopping must stop every worker at the same epoch or the others wait
    forever in their next collective op, so each takes the chief's values (an all-reduce in
    which only the chief adds non-zeros: exact) and says so on stderr if its own differed."""
    if not _multi_worker(strategy):
        return None
    # One all-reduce (a graph: eager collectives are slow and warn each time).
    total = tf.function(lambda values: strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None))

    def chiefs(epoch, named):
        values = list(named.values())
        chief = strategy.extended.should_checkpoint  # True on the chief only
        reduced = total(tf.constant(values if chief else [0.0] * len(values), tf.float64))
        result = [float(v) for v in reduced.numpy()]
        if result != values:
            print(f"{strategy.cluster_resolver.task_type} {strategy.cluster_resolver.task_id}, "
                  f"epoch {epoch + 1}: own {'/'.join(named)} {values} differ from the chief's "
                  f"{result}; using the chief's", file=sys.stderr)
        return dict(zip(named, result))

    return chiefs


class _GlobalBatchDropout(keras.layers.Dropout):
    """Dropout whose masks are the single device's: a Dropout layer's class while a training
    runs on several replicas (`distributed_layers`).

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


def distributed_layers(model, strategy) -> Callable[[], None]:
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
