"""The quality regressor: `make_model(...)` builds it from the `model` section of params.yaml.

The network scores one square crop given as raw 0–255 RGB; an image's score is the mean over
a fixed grid of crops (`nriqa.model.prediction`). Scaling and local contrast normalization are layers
of the model, so a saved model carries its own input normalization.

The default backbone is MobileNet-style: a plain stem, then depthwise-separable blocks
(depthwise 3x3 + pointwise 1x1, batch norm, ReLU6) that halve the resolution and double the
width, then global average and max pooling and a dense head. `keras.applications` MobileNetV2
and MobileNetV3Small are offered too, with `weights: imagenet` where a network is available.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from nriqa.core.config import ModelConfig
from nriqa.core.errors import NriqaError
from nriqa.model import efficientnet_lite
from nriqa.model.normalization import BatchNormalization, LayerNormalization
from nriqa.model.pretrained import efficientnet_lite0_weights

# Blocks of the from-scratch LCN stream beside a pretrained backbone (`fusion`), whose `depth`
# counts the backbone's blocks: the from-scratch default's depth.
FUSED_SCRATCH_DEPTH = 3


@keras.saving.register_keras_serializable(package="nriqa")
class LocalContrastNormalization(layers.Layer):
    """(x - local mean) / (local std + c) per channel, over a Gaussian window.

    As in CNNIQA (Kang et al., 2014): removes the image's brightness and contrast so the
    network learns the local structure that distortions change.
    """

    def __init__(self, window: int = 7, sigma: float = 7 / 6, epsilon: float = 1e-2, **kwargs):
        super().__init__(**kwargs)
        self.window, self.sigma, self.epsilon = window, sigma, epsilon

    def build(self, input_shape):
        axis = ops.arange(self.window, dtype="float32") - (self.window - 1) / 2
        g = ops.exp(-(axis ** 2) / (2 * self.sigma ** 2))
        kernel = ops.outer(g, g)
        kernel = kernel / ops.sum(kernel)
        channels = input_shape[-1]
        # Held as a numpy array, so a traced graph embeds it as a constant: an exported model
        # (ONNX, TFLite) would otherwise ask for the kernel as a second input.
        self.kernel = ops.convert_to_numpy(
            ops.tile(ops.reshape(kernel, (self.window, self.window, 1, 1)), (1, 1, channels, 1)))

    def _blur(self, x):
        pad = self.window // 2
        x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        return ops.depthwise_conv(x, self.kernel, strides=1, padding="valid")

    def call(self, inputs):
        mean = self._blur(inputs)
        variance = ops.maximum(self._blur(inputs * inputs) - mean * mean, 0.0)
        return (inputs - mean) / (ops.sqrt(variance) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "window": self.window, "sigma": self.sigma,
                "epsilon": self.epsilon}


def _conv_bn(x, filters, kernel, stride, name):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _depthwise_separable(x, filters, stride, name):
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                               name=f"{name}_dw")(x)
    x = BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    return _conv_bn(x, filters, 1, 1, f"{name}_pw")


def _mobilenet_style(x, width: float, depth: int):
    # A stride-2 stem, as in MobileNet: twice the context per crop for the same compute.
    x = _conv_bn(x, max(8, int(32 * width)), 3, 2, "stem")
    for block in range(depth):
        filters = max(8, int(64 * width * 2 ** min(block, 3)))
        x = _depthwise_separable(x, filters, 2, f"block{block + 1}")
        x = _depthwise_separable(x, filters, 1, f"block{block + 1}b")
    return x


def _applications_backbone(x, backbone: str, input_size: int, width: float, weights):
    shape = (input_size, input_size, 3)
    if backbone == "mobilenet_v2":
        x = keras.applications.mobilenet_v2.preprocess_input(x)
        net = keras.applications.MobileNetV2(input_shape=shape, alpha=width, include_top=False,
                                             weights=weights)
    else:
        # MobileNetV3 rescales inside the model; it expects raw 0-255 pixels.
        net = keras.applications.MobileNetV3Small(input_shape=shape, alpha=width,
                                                  include_top=False, weights=weights,
                                                  include_preprocessing=True)
    return net(x)


def _pooled(x, name):
    # Mean and max pooling: distortions can be spread evenly or concentrated in a few spots.
    return [layers.GlobalAveragePooling2D(name=f"{name}_mean")(x),
            layers.GlobalMaxPooling2D(name=f"{name}_max")(x)]


def _efficientnet_features(inputs, *, depth: int, weights, pooling: str, freeze: bool):
    """Pooled EfficientNet-Lite0 features of the first `depth` blocks; with `pooling: stages`
    every stage's output is pooled (early stages see the distortion, late ones the content)."""
    if not 1 <= depth <= efficientnet_lite.BLOCKS:
        raise NriqaError(f"model.depth: efficientnet_lite0 has {efficientnet_lite.BLOCKS} blocks; "
                         f"got {depth}")
    backbone = keras.Model(inputs, efficientnet_lite.stage_outputs(inputs, blocks=depth),
                           name="efficientnet_lite0")
    if weights == "imagenet":
        efficientnet_lite.load_weights(backbone, efficientnet_lite0_weights())
        for layer in backbone.layers:
            # Batch norm keeps ImageNet's statistics: small crop batches would only add noise.
            if freeze or isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    stages = backbone(inputs)
    chosen = stages if pooling == "stages" else stages[-1:]
    return [p for i, x in enumerate(chosen) for p in _pooled(x, f"pool{i}")]


def make_model(config: ModelConfig, *, initial_mos: float = 4.5) -> keras.Model:
    """Build the crop-level model that params.yaml's `model` section describes.

    Its output is one row per crop: the MOS in column 0, then (with `distortion_types` > 0)
    one logit per TID2013 distortion type, 1..`distortion_types`, and with `undistorted_class` one
    more for an undistorted image (`nriqa.core.taxonomy.head_types`). With
    `mos_head="per_type"` the MOS is the type probabilities' weighted mean of one MOS per type.
    One tensor, not a dict, so MLflow, BentoML and the service see one plain output.
    `initial_mos` is the MOS the untrained model starts from (the training labels' mean).
    """
    backbone, input_size, width, depth = config.backbone, config.input_size, config.width, config.depth
    distortion_types, mos_head = config.distortion_types, config.mos_head
    inputs = keras.Input((input_size, input_size, 3), name="crop")

    def from_scratch_stream():
        x = layers.Rescaling(1 / 255, name="to_unit")(inputs)
        if config.input_norm == "lcn":
            x = LocalContrastNormalization(epsilon=config.lcn_epsilon, name="lcn")(x)
        blocks = depth if backbone == "mobilenet_style" else FUSED_SCRATCH_DEPTH
        return _pooled(_mobilenet_style(x, width, blocks), "pool_scratch")

    if backbone == "mobilenet_style":
        features = from_scratch_stream()
    elif backbone == "efficientnet_lite0":
        features = _efficientnet_features(inputs, depth=depth, weights=config.weights,
                                          pooling=config.pooling, freeze=config.freeze)
        if config.fusion:  # beside the from-scratch LCN stream, as DBCNN fuses two streams
            features += from_scratch_stream()
    else:
        features = _pooled(_applications_backbone(inputs, backbone, input_size, width, config.weights),
                           "pool")
    x = layers.Concatenate(name="pool")(features)
    if backbone != "mobilenet_style":
        # Pretrained activations reach tens; on that scale the head's first steps blow up.
        x = LayerNormalization(name="pool_norm")(x)
    for i, units in enumerate(config.head_units):
        x = layers.Dense(units, activation="relu", name=f"head{i + 1}")(x)
        x = layers.Dropout(config.dropout, name=f"head{i + 1}_dropout")(x)
    # Starting at the mean MOS spares the first epochs from learning the offset.
    start = keras.initializers.Constant(initial_mos)
    if not distortion_types:
        return keras.Model(inputs, layers.Dense(1, name="mos", bias_initializer=start)(x),
                           name=f"nriqa_{backbone}")
    # Which distortion it is: people's opinion depends on the kind as much as the strength,
    # and it tells users why an image scored low.
    # With `undistorted_class`, one more class after the types: no distortion at all, so a clean
    # image has a kind of its own (and its own MOS) instead of borrowing a faint distortion's.
    classes = distortion_types + int(config.undistorted_class)
    logits = layers.Dense(classes, name="distortion_logits")(x)
    if mos_head == "per_type":
        # One severity scale per kind of distortion, weighted by how likely each kind is.
        per_type = layers.Dense(classes, name="mos_per_type", bias_initializer=start)(x)
        type_weights = layers.Softmax(name="type_weights")(logits)
        mos = layers.Dot(axes=1, name="mos")([type_weights, per_type])
    else:
        mos = layers.Dense(1, name="mos", bias_initializer=start)(x)
    outputs = layers.Concatenate(name="scores")([mos, logits])
    return keras.Model(inputs, outputs, name=f"nriqa_{backbone}")

