"""One encoder layer: self-attention and feed-forward, each wrapped in Add & Norm (paper, section 3.1)."""

import keras

from keras_transformer.layers.feed_forward import PositionwiseFeedForward
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.residual import add_and_norm, sublayer_input
from keras_transformer.layers.token_packing import TokenPacking, pack, unpack


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderLayer(keras.layers.Layer):
    """Multi-head self-attention, then the position-wise feed-forward network; each sub-layer is followed
    by dropout, a residual connection and LayerNorm (post-LN, as in the paper) or preceded by LayerNorm
    (`norm_first=True`, pre-LN).

    Args:
        d_model, num_heads, dff: sizes, as in the paper.
        dropout_rate: on sub-layer outputs and on attention weights.
        norm_first: pre-LN instead of the paper's post-LN.

    Call arguments:
        inputs: `[batch, src_len, d_model]`.
        padding_mask: boolean `[batch, 1, 1, src_len]`, True at real tokens
            (`keras_transformer.masks.create_padding_mask`).
        return_attention_scores: also return the self-attention weights `[batch, heads, src_len, src_len]`.

    Example:
    >>> layer = EncoderLayer(d_model=16, num_heads=4, dff=64)
    >>> tuple(layer(keras.ops.ones((2, 5, 16))).shape)
    (2, 5, 16)

    References: Vaswani et al., "Attention Is All You Need", 2017, section 3.1.
    """

    def __init__(self, d_model, num_heads, dff, dropout_rate=0.1, norm_first=False, **kwargs):
        super().__init__(**kwargs)
        self.d_model = int(d_model)
        self.num_heads = int(num_heads)
        self.dff = int(dff)
        self.dropout_rate = float(dropout_rate)
        self.norm_first = bool(norm_first)
        self.self_attention = MultiHeadAttention(
            self.d_model, self.num_heads, dropout=self.dropout_rate, name="self_attention", dtype=self.dtype_policy
        )
        self.self_attention_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="self_attention_norm", dtype=self.dtype_policy)
        self.self_attention_dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)
        self.feed_forward = PositionwiseFeedForward(self.d_model, self.dff, name="feed_forward", dtype=self.dtype_policy)
        self.feed_forward_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="feed_forward_norm", dtype=self.dtype_policy)
        self.feed_forward_dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, inputs_shape):
        for sublayer in (self.self_attention, self.self_attention_norm, self.feed_forward, self.feed_forward_norm):
            sublayer.build(inputs_shape)
        self.built = True

    def call(self, inputs, padding_mask=None, return_attention_scores=False, training=None):
        # In training, everything but the attention scores runs on the real tokens only (token_packing.py).
        packing = TokenPacking.for_call(padding_mask, training)
        x = pack(inputs, packing)
        h = sublayer_input(x, self.self_attention_norm, self.norm_first)
        attended, weights = self.self_attention(
            h,
            h,
            attention_mask=padding_mask,
            return_attention_scores=True,
            training=training,
            query_packing=packing,
            value_packing=packing,
        )
        x = add_and_norm(x, attended, self.self_attention_dropout, self.self_attention_norm, self.norm_first, training)

        h = sublayer_input(x, self.feed_forward_norm, self.norm_first)
        x = add_and_norm(x, self.feed_forward(h), self.feed_forward_dropout, self.feed_forward_norm, self.norm_first, training)
        x = unpack(x, packing)
        return (x, weights) if return_attention_scores else x

    def get_config(self):
        return {
            **super().get_config(),
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "dff": self.dff,
            "dropout_rate": self.dropout_rate,
            "norm_first": self.norm_first,
        }
