"""lwlrap as a streaming Keras 3 metric (the trainer's validation metric), in-graph.

It computes the same per-class sums as `pipeline.metrics.lwlrap.LwlrapAccumulator` (see that module for
the definition) with a [batch, C, C] comparison, which is cheap for the 80 classes of the
competition, and keeps them in two [C] variables that `tf.distribute` sums across replicas, so
the value under MirroredStrategy equals the single-device value over the same samples.
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fatp")
class LwlrapMetric(keras.metrics.Metric):
    """Streaming lwlrap as a Keras 3 metric, computed in-graph.

    State: ``numerator`` and ``count``, [num_classes] variables that Keras sums across replicas
    (metric variables are SUM-aggregated, on-read synchronized), so the value under
    ``tf.distribute`` equals the single-device value over the same samples.

    update_state(y_true, y_pred, sample_weight=None): y_true [batch, C] binary, y_pred [batch, C]
    scores (compared in their own dtype; ties handled exactly as scikit-learn). A per-sample
    ``sample_weight`` [batch] scales that sample's contributions to both sums (0 masks a sample,
    e.g. padding); it is not sklearn's sample_weight.
    result() = sum(numerator) / max(sum(count), eps)  (0.0 before any positive label is seen).
    """

    def __init__(self, num_classes: int, name: str = "lwlrap", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"LwlrapMetric: num_classes must be >= 1, got {num_classes}")
        self.numerator = self.add_weight(
            shape=(self.num_classes,), initializer="zeros", name="numerator", dtype=self.dtype)
        self.count = self.add_weight(
            shape=(self.num_classes,), initializer="zeros", name="count", dtype=self.dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        c = self.num_classes
        y_pred = ops.convert_to_tensor(y_pred)
        if "float" not in keras.backend.standardize_dtype(y_pred.dtype):
            y_pred = ops.cast(y_pred, "float32")
        y_pred = ops.reshape(y_pred, (-1, c))
        truth = ops.reshape(ops.cast(ops.convert_to_tensor(y_true), self.dtype), (-1, c))
        # ge[b, j, k] = score[b, k] >= score[b, j]
        ge = ops.cast(
            ops.greater_equal(ops.expand_dims(y_pred, 1), ops.expand_dims(y_pred, 2)), self.dtype)
        rank = ops.sum(ge, axis=2)                                      # >= 1 (k = j)
        hits = ops.sum(ge * ops.expand_dims(truth, 1), axis=2)
        prec = truth * hits / rank                                      # [batch, C]
        counts = truth
        if sample_weight is not None:
            w = ops.reshape(ops.cast(ops.convert_to_tensor(sample_weight), self.dtype), (-1, 1))
            prec = prec * w
            counts = counts * w
        self.numerator.assign_add(ops.sum(prec, axis=0))
        self.count.assign_add(ops.sum(counts, axis=0))

    def result(self):
        ops = keras.ops
        total = ops.sum(self.count)
        return ops.sum(self.numerator) / ops.maximum(total, keras.backend.epsilon())

    def reset_state(self):
        self.numerator.assign(keras.ops.zeros((self.num_classes,), dtype=self.dtype))
        self.count.assign(keras.ops.zeros((self.num_classes,), dtype=self.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config
