"""Token embeddings scaled by sqrt(d_model), optionally reused as the pre-softmax projection (paper, 3.4)."""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class TokenEmbedding(keras.layers.Layer):
    """Looks up `[batch, len]` token ids and multiplies the vectors by sqrt(d_model), as the paper does.

    Called with `reverse=True` on `[batch, len, d_model]` vectors, it returns logits `x E^T` over the
    vocabulary: this is how the paper shares one matrix between the embeddings and the pre-softmax projection.

    Ids are checked: a float tensor, a rank other than 2, or ids outside `[0, vocab_size)` raise an error that
    says so (instead of a gather error from deep inside TensorFlow).

    Args:
        vocab_size: number of token ids.
        d_model: embedding width.
        input_name: how to call the ids in error messages.

    Example:
    >>> emb = TokenEmbedding(vocab_size=100, d_model=16)
    >>> vectors = emb(keras.ops.array([[5, 6, 0]], dtype="int32"))
    >>> tuple(emb(vectors, reverse=True).shape)
    (1, 3, 100)
    """

    def __init__(self, vocab_size, d_model, input_name="ids", **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.d_model = int(d_model)
        self.input_name = input_name
        # Gather rows of the float32 table, then cast them (as keras.layers.Embedding does): with autocasting on, a
        # mixed-precision policy would cast the whole [vocab, d_model] table to the compute dtype every step. Same
        # values; the embedding gradient is then also accumulated in float32.
        self.autocast = False

    def build(self, inputs_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.d_model),
            initializer=keras.initializers.RandomNormal(stddev=self.d_model**-0.5),
        )
        self.built = True

    def call(self, inputs, reverse=False):
        if reverse:
            return ops.matmul(inputs, ops.transpose(ops.cast(self.embeddings, inputs.dtype)))
        ids = self._checked_ids(inputs)
        vectors = ops.take(self.embeddings, ids, axis=0)
        return ops.cast(vectors, self.compute_dtype) * ops.cast(self.d_model**0.5, self.compute_dtype)

    def _checked_ids(self, ids):
        dtype = keras.backend.standardize_dtype(ids.dtype)
        if "int" not in dtype:
            raise ValueError(
                f"{self.input_name} must hold integer token ids, got dtype {dtype}. Tokenize the text and pass "
                "int32 ids (e.g. `np.asarray(ids, dtype='int32')`)."
            )
        if len(ids.shape) != 2:
            raise ValueError(
                f"{self.input_name} must have shape [batch, length], got rank {len(ids.shape)} "
                f"(shape {tuple(ids.shape)}). Add a batch dimension for a single sequence."
            )
        message = (
            f"{self.input_name} contains token ids outside [0, {self.vocab_size}): the ids do not match the "
            "model's vocabulary. Use the tokenizer the model was trained with, or a config with a larger "
            "vocabulary size."
        )
        if tf.executing_eagerly():
            if bool(ops.any(ids < 0)) or bool(ops.any(ids >= self.vocab_size)):
                raise ValueError(message)
        else:
            with tf.control_dependencies(
                [
                    tf.debugging.assert_non_negative(ids, message=message),
                    tf.debugging.assert_less(ids, tf.cast(self.vocab_size, ids.dtype), message=message),
                ]
            ):
                ids = tf.identity(ids)
        return ids

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "input_name": self.input_name,
        }
