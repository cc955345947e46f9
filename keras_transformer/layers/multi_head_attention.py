"""Multi-head scaled dot-product attention (paper, sections 3.2.1 and 3.2.2)."""

import keras
from keras import ops

from keras_transformer.layers.token_packing import pack, unpack


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O, head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i),
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.

    W_Q, W_K, W_V project to `d_model`, which is split into `num_heads` heads of depth `d_k = d_model / num_heads`.

    Args:
        d_model: model width (input and output of the layer).
        num_heads: number of heads; must divide `d_model`.
        dropout: dropout rate on the attention weights.

    Call arguments:
        query: `[batch, query_len, d_model]`.
        value: `[batch, key_len, d_model]` (the encoder output for cross-attention).
        key: defaults to `value`.
        attention_mask: boolean, broadcastable to `[batch, num_heads, query_len, key_len]`;
            True = may attend (see `keras_transformer.masks`). Masked keys get exactly zero weight;
            a query whose keys are all masked gets all-zero weights (and a zero output), never NaN.
        return_attention_scores: also return the weights `[batch, num_heads, query_len, key_len]`.
        cache: `(key, value)` tensors, each `[batch, num_heads, cache_len, d_k]`, for incremental decoding.
            With `cache_update_index`, the projections of this call's `query` positions are written into the
            cache at that index (decoder self-attention) and the call attends over the whole cache; without it,
            the cache is used as precomputed keys/values (cross-attention; `value` is then ignored).
        cache_update_index: int scalar, where to write into `cache`.
        query_packing, value_packing: `TokenPacking`s (training only, see `token_packing.py`) when `query` (and the
            output) or `value`/`key` hold only the real tokens, `[tokens, d_model]`: the projections run on those
            rows, and the attention itself on the `[batch, len]` layout.

    Returns `output`, plus the weights if asked, plus the updated cache if `cache` was given, in that order.

    Example:
    >>> mha = MultiHeadAttention(d_model=16, num_heads=4)
    >>> x = keras.ops.ones((2, 5, 16))
    >>> out, weights = mha(x, x, return_attention_scores=True)
    >>> tuple(out.shape), tuple(weights.shape)
    ((2, 5, 16), (2, 4, 5, 5))

    References: Vaswani et al., "Attention Is All You Need", 2017, section 3.2.
    """

    def __init__(self, d_model, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if d_model % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide d_model={d_model}: each head gets d_model / num_heads "
                "dimensions."
            )
        self.d_model = int(d_model)
        self.num_heads = int(num_heads)
        self.depth = self.d_model // self.num_heads
        self.dropout = float(dropout)
        self.query_dense = keras.layers.Dense(self.d_model, name="query", dtype=self.dtype_policy)  # W_Q
        self.key_dense = keras.layers.Dense(self.d_model, name="key", dtype=self.dtype_policy)  # W_K
        self.value_dense = keras.layers.Dense(self.d_model, name="value", dtype=self.dtype_policy)  # W_V
        self.output_dense = keras.layers.Dense(self.d_model, name="attention_output", dtype=self.dtype_policy)  # W_O
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        self.query_dense.build(query_shape)
        self.key_dense.build(key_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (self.d_model,))
        self.built = True

    def _split_heads(self, x):
        """`[batch, len, d_model]` -> `[batch, num_heads, len, depth]`."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, self.num_heads, self.depth))
        return ops.transpose(x, (0, 2, 1, 3))

    def _merge_heads(self, x):
        """`[batch, num_heads, len, depth]` -> `[batch, len, d_model]`."""
        batch, length = ops.shape(x)[0], ops.shape(x)[2]
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch, length, self.d_model))

    def compute_key_value(self, value, key=None, packing=None):
        """Projected, head-split keys and values for `value`: the cross-attention cache of a decoder."""
        key = value if key is None else key
        return (
            self._split_heads(unpack(self.key_dense(key), packing)),
            self._split_heads(unpack(self.value_dense(value), packing)),
        )

    def call(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        cache=None,
        cache_update_index=None,
        query_packing=None,
        value_packing=None,
    ):
        if value is None and value_packing is None:  # self-attention on `query` alone: its packing too
            value_packing = query_packing
        q = self._split_heads(unpack(self.query_dense(query), query_packing))
        if cache is not None and cache_update_index is None:
            k, v = cache
        else:
            k, v = self.compute_key_value(query if value is None else value, key, value_packing)
            if cache is not None:
                start = (0, 0, cache_update_index, 0)
                k = ops.slice_update(cache[0], start, ops.cast(k, cache[0].dtype))
                v = ops.slice_update(cache[1], start, ops.cast(v, cache[1].dtype))
                cache = (k, v)

        attended, weights = self._attend(q, k, v, attention_mask, training)
        output = self.output_dense(pack(self._merge_heads(attended), query_packing))

        results = (output,)
        if return_attention_scores:
            results += (weights,)
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def _attend(self, q, k, v, attention_mask, training):
        """softmax(q k^T / sqrt(d_k)) v per head; returns `(attended, weights)`."""
        # Scores, masking and softmax in float32: safe under float16/bfloat16 mixed precision.
        scores = ops.einsum("bhqd,bhkd->bhqk", q, k)
        scores = ops.cast(scores, "float32") / ops.sqrt(ops.cast(self.depth, "float32"))
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            scores = ops.where(attention_mask, scores, -3.0e38)  # float32's own range, never overflows
        weights = ops.softmax(scores, axis=-1)
        if attention_mask is not None:
            # Exactly zero for masked keys, and all-zero (not uniform) rows when every key is masked.
            weights = ops.where(attention_mask, weights, 0.0)
        # Dropout on the float32 weights, then the cast: float32 random numbers are cheaper to draw than bfloat16 ones
        # (about 8% of a mixed-precision training step at the reference config), and the mask is applied exactly.
        # `keras.random.dropout` with the Dropout layer's seed generator, as `Dropout.call` does: calling the layer
        # would cast its float32 input to the compute dtype first.
        dropped = weights
        if training and self.dropout > 0:
            dropped = keras.random.dropout(weights, self.dropout, seed=self.dropout_layer.seed_generator)
        dropped = ops.cast(dropped, self.compute_dtype)
        attended = ops.einsum("bhqk,bhkd->bhqd", dropped, ops.cast(v, self.compute_dtype))
        return attended, ops.cast(weights, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
        }
