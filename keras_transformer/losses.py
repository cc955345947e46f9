"""Masked, label-smoothed cross-entropy (paper, section 5.4): padding never contributes to the loss."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy between integer labels and logits, averaged over the non-pad labels only.

    With label smoothing eps, the target distribution is (1 - eps) on the true token plus eps spread uniformly
    over the vocabulary: loss = (1 - eps) * NLL + eps * mean_over_vocab(-log p). This needs no one-hot labels.

    The result is a mean over real tokens, so appending more padding to a batch leaves it unchanged.

    Under a `tf.distribute` strategy with N replicas, each replica returns its token sum divided by the number of
    real tokens of the WHOLE global batch: Keras 3 leaves a scalar loss unscaled and sums the replicas' gradients,
    so the sum is exactly the gradient of the global mean, whatever the padding of each replica's share.

    Args:
        pad_id: label id to ignore.
        label_smoothing: eps (0.1 in the paper).
        from_logits: must be True (the model outputs logits).

    Example:
    >>> loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    >>> float(loss(keras.ops.array([[3, 0]]), keras.ops.zeros((1, 2, 10)))) > 0
    True
    """

    def __init__(self, pad_id=0, label_smoothing=0.0, from_logits=True, name="masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not from_logits:
            raise ValueError("MaskedSparseCategoricalCrossentropy expects logits (from_logits=True).")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.pad_id = int(pad_id)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = True

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
        if self.label_smoothing:
            smooth = -ops.mean(log_probs, axis=-1)
            nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        return ops.sum(nll * mask) / ops.maximum(_global_token_count(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id, "label_smoothing": self.label_smoothing, "from_logits": True}


def _global_token_count(mask):
    """Real tokens in this batch, summed over all replicas when running under a multi-replica strategy."""
    tokens = ops.sum(mask)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            tokens = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(tokens))
    return tokens
