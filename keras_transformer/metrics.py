"""Token accuracy that ignores padding."""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedAccuracy(keras.metrics.Metric):
    """Share of non-pad labels whose argmax prediction is right, accumulated over batches.

    Example:
    >>> metric = MaskedAccuracy()
    >>> metric.update_state(keras.ops.array([[1, 2, 0]]), keras.ops.one_hot(keras.ops.array([[1, 3, 3]]), 4))
    >>> float(metric.result())
    0.5
    """

    def __init__(self, pad_id=0, name="masked_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = int(pad_id)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        # tf.argmax directly: keras.ops.argmax first casts the logits to float32 and rewrites -0.0 (four extra passes
        # over [batch, length, vocab]), 9-13% of a training step here (bench/levers.py's docstring, bench/levers.json). The -0.0 case cannot change
        # which token is largest unless all logits are zero.
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        if sample_weight is not None:
            mask = mask * ops.cast(sample_weight, "float32")
        self.correct.assign_add(ops.sum(ops.cast(ops.equal(predicted, y_true), "float32") * mask))
        self.total.assign_add(ops.sum(mask))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}
