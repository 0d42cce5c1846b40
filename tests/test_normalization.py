"""Batch and layer normalization without TensorFlow's Rsqrt (nriqa.model.normalization)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nriqa.model.normalization import BatchNormalization, LayerNormalization, _normalize
from nriqa.model.training import BackboneScaledAdam, CropSetModel, joint_loss
from tests.test_model import pretrained_model

# TensorFlow ops whose CPU kernels start from the CPU's approximate reciprocal (square root)
# instructions, RCPPS and RSQRTPS, whose results differ between CPU makers.
APPROXIMATE_OPS = {"Rsqrt", "RsqrtGrad", "Reciprocal", "ReciprocalGrad", "Inv", "InvGrad"}


def optimized_op_types(function) -> set[str]:
    """The op types of a traced function's graph as TensorFlow runs it: after Grappler, whose
    rewrites can bring Rsqrt in (x / sqrt(y) becomes x * rsqrt(y)). Grappler's own Python
    entry point, as its tests use it."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    graph = function.graph
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(tensor.name for tensor in function.outputs)
    meta.collection_def["train_op"].CopyFrom(fetches)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)
    return {node.op for node in optimized.node} | {
        node.op for called in optimized.library.function for node in called.node_def}


def test_grappler_brings_rsqrt_into_a_plain_division_by_a_square_root():
    """Why the layers divide with DivNoNan: the check below would miss a plain division."""
    x, v = tf.ones((4, 3)), tf.ones(3)
    plain = tf.function(lambda x, v: tf.nn.relu6(x / tf.sqrt(v + 1e-3)) * 2.0)
    ours = tf.function(lambda x, v: tf.nn.relu6(_normalize(x, v, v, v, v, 1e-3)) * 2.0)
    assert "Rsqrt" in optimized_op_types(plain.get_concrete_function(x, v))
    assert not optimized_op_types(ours.get_concrete_function(x, v)) & APPROXIMATE_OPS


def test_the_default_networks_training_step_and_scoring_use_no_approximate_kernels():
    """What the same training on two CPU makers would compute differently: none of it."""
    model = pretrained_model(depth=3, pooling="stages", fusion=True)
    trainer = CropSetModel(model, own_type_scales=True)
    optimizer = BackboneScaledAdam(1e-3, backbone_scale=0.02)
    loss = joint_loss("mse", 0.3, undistorted_class=True, own_type_weight=0.5)
    crop_sets = np.random.default_rng(0).uniform(0, 255, (2, 4, 32, 32, 3)).astype(np.float32)
    targets = np.array([[4.0, 3], [5.5, 0]], np.float32)
    trainer(crop_sets)
    optimizer.build(trainer.trainable_variables)

    @tf.function
    def step(crop_sets, targets):
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(targets, trainer(crop_sets, training=True)))
        optimizer.apply(tape.gradient(value, trainer.trainable_variables), trainer.trainable_variables)
        return value

    trained = optimized_op_types(step.get_concrete_function(crop_sets, targets))
    scored = optimized_op_types(tf.function(model).get_concrete_function(crop_sets[0]))
    assert {"Sqrt", "DivNoNan"} <= trained & scored  # the normalization is there
    assert not (trained | scored) & APPROXIMATE_OPS


@pytest.mark.parametrize("training", [True, False])
def test_batch_normalization_computes_what_keras_does(training):
    x = np.random.default_rng(1).normal(3.0, 2.0, (8, 5, 5, 4)).astype(np.float32)
    ours, theirs = BatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    ours.build(x.shape), theirs.build(x.shape)
    for layer in (ours, theirs):
        layer.set_weights([np.array([1.5, 0.5, 1.0, 2.0], np.float32), np.full(4, 0.25, np.float32),
                           np.full(4, 1.0, np.float32), np.full(4, 3.0, np.float32)])
    np.testing.assert_allclose(ours(x, training=training), theirs(x, training=training),
                               rtol=1e-5, atol=1e-5)
    for mine, keras_weight in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras_weight, rtol=1e-6)  # moving statistics too


def test_layer_normalization_computes_what_keras_does():
    x = np.random.default_rng(2).normal(10.0, 5.0, (6, 32)).astype(np.float32)
    ours, theirs = LayerNormalization(), keras.layers.LayerNormalization()
    ours.build(x.shape), theirs.build(x.shape)
    gamma = np.random.default_rng(3).uniform(0.5, 2, 32).astype(np.float32)
    for layer in (ours, theirs):
        layer.set_weights([gamma, np.full(32, -0.5, np.float32)])
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_renorm_is_refused_by_name():
    with pytest.raises(ValueError, match="stem_bn: renorm"):
        BatchNormalization(renorm=True, name="stem_bn")(np.ones((2, 4), np.float32), training=True)
