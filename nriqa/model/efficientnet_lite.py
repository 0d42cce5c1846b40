"""EfficientNet-Lite0 in Keras, with the ImageNet weights of `nriqa.model.pretrained`.

Lite0 is EfficientNet-B0 made for mobile: ReLU6 instead of swish, no squeeze-and-excite, a
fixed stem and head. Each MBConv block expands with a 1x1 convolution (except the first),
filters with a depthwise kxk, projects back with a 1x1, and adds its input when the shape
allows. Padding is TensorFlow's `same` and batch norm's epsilon 1e-3, as in the TF-Lite
originals; the input is RGB scaled as (x - 127) / 128.

`stage_outputs` returns the output of every stage (stem to head), so the quality model can pool
early blocks, which see the distortion, beside late ones, which see the content.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from nriqa.model.normalization import BatchNormalization
from nriqa.model.pretrained import efficientnet_lite0_weights

# (repeats, kernel, first stride, expansion, output channels) per stage, as in EfficientNet-B0.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BLOCKS = sum(stage[0] for stage in STAGES)  # 16 MBConv blocks
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPSILON = 1e-3
PREFIX = "effnet"  # every backbone layer's name starts with it (the optimizer finds them by it)
# Lukemelas-style names of each layer's weights in the published state dict.
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _bn(name):
    return BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def block_plan() -> list[tuple[int, int, int, int, int, bool]]:
    """(block, kernel, stride, expansion, output channels, last of its stage) per block."""
    plan, block = [], 0
    for repeats, kernel, stride, expansion, channels in STAGES:
        for r in range(repeats):
            plan.append((block, kernel, stride if r == 0 else 1, expansion, channels,
                         r == repeats - 1))
            block += 1
    return plan


def stage_outputs(x, *, blocks: int = BLOCKS):
    """The input scaling, stem and the first `blocks` MBConv blocks (and the 1x1 head conv
    when all 16 are kept); returns the output of the stem and of each stage reached,
    in order (the last is the network's final feature map)."""
    prefix = PREFIX
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name=f"{prefix}_scale")(x)
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False,
                      name=f"{prefix}_stem_conv")(x)
    x = layers.ReLU(6.0, name=f"{prefix}_stem_relu")(_bn(f"{prefix}_stem_bn")(x))
    outputs = [x]
    channels = STEM_CHANNELS
    for block, kernel, stride, expansion, out_channels, stage_end in block_plan()[:blocks]:
        name = f"{prefix}_block{block}"
        y = x
        if expansion != 1:
            y = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand")(y)
            y = layers.ReLU(6.0, name=f"{name}_expand_relu")(_bn(f"{name}_expand_bn")(y))
        y = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw")(y)
        y = layers.ReLU(6.0, name=f"{name}_dw_relu")(_bn(f"{name}_dw_bn")(y))
        y = _bn(f"{name}_project_bn")(
            layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_project")(y))
        if stride == 1 and channels == out_channels:
            y = layers.Add(name=f"{name}_add")([x, y])
        x, channels = y, out_channels
        if stage_end or block == blocks - 1:
            outputs.append(x)
    if blocks == BLOCKS:
        x = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name=f"{prefix}_head_conv")(x)
        outputs.append(layers.ReLU(6.0, name=f"{prefix}_head_relu")(_bn(f"{prefix}_head_bn")(x)))
    return outputs


def _layer_weights() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (state-dict prefix, kind) for every weighted layer."""
    prefix = PREFIX
    names = {f"{prefix}_stem_conv": ("_conv_stem", "conv"), f"{prefix}_stem_bn": ("_bn0", "bn"),
             f"{prefix}_head_conv": ("_conv_head", "conv"), f"{prefix}_head_bn": ("_bn1", "bn")}
    for block, *_ in block_plan():
        source, name = f"_blocks.{block}", f"{prefix}_block{block}"
        names.update({f"{name}_expand": (f"{source}._expand_conv", "conv"),
                      f"{name}_expand_bn": (f"{source}._bn0", "bn"),
                      f"{name}_dw": (f"{source}._depthwise_conv", "depthwise"),
                      f"{name}_dw_bn": (f"{source}._bn1", "bn"),
                      f"{name}_project": (f"{source}._project_conv", "conv"),
                      f"{name}_project_bn": (f"{source}._bn2", "bn")})
    return names


def load_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a PyTorch-layout state dict into the model's backbone layers. Every backbone layer
    the model has must be in the state dict."""
    for layer_name, (key, kind) in _layer_weights().items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            continue  # a truncated backbone lacks the later blocks
        if kind == "bn":
            layer.set_weights([state[f"{key}.{part}"] for part in _BN_KEYS])
        elif kind == "depthwise":  # (C, 1, k, k) -> (k, k, C, 1)
            layer.set_weights([state[f"{key}.weight"].transpose(2, 3, 0, 1)])
        else:  # (out, in, k, k) -> (k, k, in, out)
            layer.set_weights([state[f"{key}.weight"].transpose(2, 3, 1, 0)])


def imagenet_classifier() -> keras.Model:
    """The whole ImageNet network, logits over the 1,000 classes: a check of the port."""

    inputs = keras.Input((None, None, 3), name="image")
    x = layers.GlobalAveragePooling2D(name="effnet_pool")(stage_outputs(inputs)[-1])
    model = keras.Model(inputs, layers.Dense(1000, name="effnet_fc")(x),
                        name="efficientnet_lite0")
    state = efficientnet_lite0_weights()
    load_weights(model, state)
    model.get_layer("effnet_fc").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    return model
