"""Position-wise feed-forward network (paper, section 3.3)."""

import keras


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionwiseFeedForward(keras.layers.Layer):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied to each position separately.

    Args:
        d_model: input and output width.
        dff: inner width (2048 in the paper's base model).

    Example:
    >>> tuple(PositionwiseFeedForward(d_model=16, dff=64)(keras.ops.ones((2, 5, 16))).shape)
    (2, 5, 16)

    References: Vaswani et al., "Attention Is All You Need", 2017, section 3.3.
    """

    def __init__(self, d_model, dff, **kwargs):
        super().__init__(**kwargs)
        self.d_model = int(d_model)
        self.dff = int(dff)
        self.inner_dense = keras.layers.Dense(self.dff, activation="relu", name="inner", dtype=self.dtype_policy)
        self.output_dense = keras.layers.Dense(self.d_model, name="output", dtype=self.dtype_policy)

    def build(self, inputs_shape):
        self.inner_dense.build(inputs_shape)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (self.dff,))
        self.built = True

    def call(self, inputs):
        return self.output_dense(self.inner_dense(inputs))

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[:-1]) + (self.d_model,)

    def get_config(self):
        return {**super().get_config(), "d_model": self.d_model, "dff": self.dff}
