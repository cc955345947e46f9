"""Sinusoidal positional encoding (paper, section 3.5)."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops


def positional_encoding(length, d_model):
    """The `[length, d_model]` table of the paper, as float32 numpy:

        PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
        PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

    Sines sit at even columns and cosines at odd columns, interleaved, exactly as the formula reads.
    """
    if length <= 0 or d_model <= 0:
        raise ValueError(f"length and d_model must be positive, got length={length}, d_model={d_model}.")
    positions = np.arange(length, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angles = positions / np.power(10000.0, two_i / d_model)
    table = np.zeros((length, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return table.astype(np.float32)


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionalEncoding(keras.layers.Layer):
    """Adds the sinusoidal position table to already-embedded inputs.

    Args:
        max_length: longest sequence supported; longer inputs raise a clear error.
        d_model: the embedding width.

    Call arguments:
        inputs: `[batch, seq_len, d_model]`.
        start_index: position of `inputs[:, 0]` (used by incremental decoding); default 0.

    Example:
    >>> x = keras.ops.zeros((2, 10, 16))
    >>> tuple(PositionalEncoding(max_length=64, d_model=16)(x).shape)
    (2, 10, 16)

    References: Vaswani et al., "Attention Is All You Need", 2017, section 3.5.
    """

    def __init__(self, max_length, d_model, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.d_model = int(d_model)
        self.table = positional_encoding(self.max_length, self.d_model)

    def call(self, inputs, start_index=0):
        length = inputs.shape[1]
        if length is not None and isinstance(start_index, int) and length + start_index > self.max_length:
            raise ValueError(
                f"Input sequence of length {length + start_index} is longer than max_length="
                f"{self.max_length} of {self.name}. Truncate the input or build the model with a "
                "larger max_length."
            )
        length = ops.shape(inputs)[1]
        if not isinstance(length, int):  # dynamic length: check at run time, before the slice can fail
            check = tf.debugging.assert_less_equal(
                length + start_index,
                self.max_length,
                message=f"Input sequence is longer than max_length={self.max_length}: truncate the "
                "input or build the model with a larger max_length.",
            )
            with tf.control_dependencies([check]):
                length = tf.identity(length)
        table = ops.convert_to_tensor(self.table, dtype=self.compute_dtype)
        positions = ops.slice(table, (start_index, 0), (length, self.d_model))
        return inputs + ops.expand_dims(positions, 0)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length, "d_model": self.d_model}
