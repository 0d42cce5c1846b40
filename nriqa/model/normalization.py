"""Batch and layer normalization that compute the same bits on every x86-64 CPU.

Keras's BatchNormalization and LayerNormalization multiply by TensorFlow's Rsqrt, whose CPU
kernel starts from the RSQRTPS instruction and refines it with one Newton step. RSQRTPS is an
approximation that each CPU maker builds its own way (Intel's manual promises only a relative
error under 1.5 × 2⁻¹²): on an AMD EPYC, TensorFlow's rsqrt missed the correctly rounded 1/√x
for 24% of a million floats, and the same commit, params, seed and data trained other weights
there than on Intel Xeons (docs/model.md, "Reproducibility across CPUs"). These layers divide
by √(variance + ε) instead: square root and division are correctly rounded IEEE operations,
bit for bit the same on every CPU. They are otherwise Keras's (same weights, same config).
"""

from __future__ import annotations

import keras
from keras import layers, ops


def _normalize(x, mean, variance, gamma, beta, epsilon):
    # tf.nn.batch_normalization's arithmetic, with gamma / sqrt(...) for its rsqrt(...) * gamma.
    # divide_no_nan (TensorFlow's DivNoNan): Grappler rewrites a plain x / sqrt(y) in a traced
    # graph into x * rsqrt(y), but not a DivNoNan; the divisor is never 0 here.
    scale = ops.divide_no_nan(1.0 if gamma is None else gamma, ops.sqrt(variance + epsilon))
    shift = -mean * scale if beta is None else beta - mean * scale
    return x * scale + shift


@keras.saving.register_keras_serializable(package="nriqa")
class BatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization (channels last, no renorm) without TensorFlow's Rsqrt."""

    def call(self, inputs, training=None, mask=None):
        if self.renorm:
            raise ValueError(f"{self.name}: renorm is not supported")
        if training and self.trainable:
            # Keras's own moments: across replicas too, where the layer is `synchronized`.
            mean, variance = self._moments(inputs, mask)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return _normalize(inputs, mean, variance, self.gamma, self.beta, self.epsilon)


@keras.saving.register_keras_serializable(package="nriqa")
class LayerNormalization(layers.LayerNormalization):
    """Keras's LayerNormalization (without its deprecated rms_scaling) without TensorFlow's Rsqrt."""

    def call(self, inputs):
        mean, variance = ops.moments(inputs, axes=self.axis, keepdims=True)
        return _normalize(inputs, mean, variance, self.gamma, self.beta, self.epsilon)
