"""Feed-forward attention over time (Raffel & Ellis 2016), the seed kernel's `Attention` layer.

For a sequence h_t (t = 1..T) of D-dim features: e_t = tanh(h_t . w + b_t), a = softmax_t(e),
output = sum_t a_t h_t. The seed computes exp(e) / sum(exp(e)) (the same softmax) with a bias per
time step, which ties the layer to a fixed T; `step_dim=None` drops that bias and accepts any
length. Masked steps get zero weight; a fully masked row returns zeros instead of NaN.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fatp")
class Attention(keras.layers.Layer):
    def __init__(self, step_dim: int | None = None, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.step_dim = step_dim
        self.use_bias = use_bias and step_dim is not None
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Attention expects [batch, time, features], got {input_shape}")
        if self.step_dim is not None and input_shape[1] not in (None, self.step_dim):
            raise ValueError(f"Attention(step_dim={self.step_dim}) got {input_shape[1]} time steps")
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(self.step_dim,), initializer="zeros") if self.use_bias else None

    def call(self, x, mask=None):
        scores = ops.tanh(ops.tensordot(x, self.w, axes=[[2], [0]]) + (self.b if self.b is not None else 0.0))
        if mask is not None:
            mask = ops.cast(mask, x.dtype)
            scores = scores + (1.0 - mask) * -1e9
        weights = ops.softmax(scores, axis=1)
        if mask is not None:
            weights = weights * mask   # all-masked rows: zeros, not a uniform average of padding
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return input_shape[0], input_shape[-1]

    def get_config(self):
        return {**super().get_config(), "step_dim": self.step_dim, "use_bias": self.use_bias}
