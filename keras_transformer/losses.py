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
        nll = smoothed_cross_entropy(ops.cast(y_pred, "float32"), y_true, self.label_smoothing)
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


def smoothed_cross_entropy(logits, labels, label_smoothing=0.0):
    """Per position: `(1 - eps) * -log p(label) + eps * mean_over_vocab(-log p)`, p = softmax(logits).

    `logits` float32 `[..., vocab]`, `labels` int32 `[...]`. On TensorFlow it is computed as
    `logsumexp(logits) - (1 - eps) * logits[label] - eps * mean(logits)` with a hand-written gradient,
    `softmax(logits) - ((1 - eps) * onehot(label) + eps / vocab)`: one exp pass over the large `[..., vocab]` logits,
    reused by the gradient, and no log-probability tensor, no one-hot tensor and no scatter-add gradient of a gather
    (what autodiff of the textbook form below costs on CPU: about 10% of a training step at 8,000 target pieces).
    Same values and gradients as the textbook form, up to float rounding.
    """
    eps = float(label_smoothing)
    if keras.backend.backend() != "tensorflow":  # the textbook form
        log_probs = ops.log_softmax(logits, axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1), -1)
        return (1.0 - eps) * nll - eps * ops.mean(log_probs, axis=-1) if eps else nll
    import tensorflow as tf

    labels = tf.convert_to_tensor(labels, tf.int32)

    @tf.custom_gradient
    def cross_entropy(logits):
        peak = tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
        exp = tf.exp(logits - peak)
        total = tf.reduce_sum(exp, axis=-1, keepdims=True)
        logsumexp = tf.squeeze(tf.math.log(total) + peak, -1)
        true_logit = tf.gather(logits, labels, batch_dims=len(labels.shape))
        loss = logsumexp - (1.0 - eps) * true_logit
        if eps:
            loss -= eps * tf.reduce_mean(logits, axis=-1)

        def grad(upstream):
            vocab = tf.shape(logits)[-1]
            gradient = exp * tf.expand_dims(upstream, -1) / total  # softmax * upstream
            if eps:
                gradient -= tf.expand_dims(upstream, -1) * (eps / tf.cast(vocab, logits.dtype))
            # minus (1 - eps) * upstream at each label: a scatter of one value per position, not a one-hot tensor
            flat = tf.reshape(gradient, tf.stack([-1, vocab]))
            rows = tf.range(tf.shape(flat)[0])
            indices = tf.stack([rows, tf.reshape(labels, [-1])], axis=1)
            flat = tf.tensor_scatter_nd_sub(flat, indices, (1.0 - eps) * tf.reshape(upstream, [-1]))
            return tf.reshape(flat, tf.shape(logits))

        return loss, grad

    return cross_entropy(logits)
