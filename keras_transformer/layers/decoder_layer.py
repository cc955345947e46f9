"""One decoder layer: masked self-attention, encoder-decoder attention and feed-forward (paper, section 3.1)."""

import keras
from keras import ops

from keras_transformer.layers.feed_forward import PositionwiseFeedForward
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.residual import add_and_norm, sublayer_input
from keras_transformer.layers.token_packing import TokenPacking, pack, unpack
from keras_transformer.masks import create_look_ahead_mask


@keras.saving.register_keras_serializable(package="keras_transformer")
class DecoderLayer(keras.layers.Layer):
    """Masked multi-head self-attention, multi-head attention over the encoder output (queries from the
    decoder, keys and values from the encoder), then the feed-forward network; each sub-layer is followed by
    dropout, a residual connection and LayerNorm (post-LN) or preceded by LayerNorm (`norm_first=True`).

    Args:
        d_model, num_heads, dff: sizes, as in the paper.
        dropout_rate: on sub-layer outputs and on attention weights.
        norm_first: pre-LN instead of the paper's post-LN.

    Call arguments:
        inputs: `[batch, tgt_len, d_model]`, the (shifted) target embeddings.
        encoder_output: `[batch, src_len, d_model]`.
        encoder_padding_mask: boolean `[batch, 1, 1, src_len]`, True at real source tokens.
        decoder_padding_mask: boolean `[batch, 1, 1, tgt_len]`, True at real target tokens. It is combined with
            the look-ahead mask, so position i never sees positions > i.
        return_attention_scores: also return `(self_attention_weights, cross_attention_weights)`.
        self_attention_cache, self_attention_cache_update_index: `(key, value)` buffers
            `[batch, heads, max_len, d_k]` and the position of `inputs` (one step) for incremental decoding;
            `self_attention_mask` must then say which cache positions are filled (`[batch or 1, 1, 1, max_len]`).
        cross_attention_cache: precomputed `(key, value)` of the encoder output
            (`self.cross_attention.compute_key_value(encoder_output)`); `encoder_output` is then ignored.

    Returns the output, then the attention weights if asked, then the updated self-attention cache if one was given.

    Example:
    >>> layer = DecoderLayer(d_model=16, num_heads=4, dff=64)
    >>> tuple(layer(keras.ops.ones((2, 7, 16)), keras.ops.ones((2, 5, 16))).shape)
    (2, 7, 16)

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
        self.cross_attention = MultiHeadAttention(
            self.d_model, self.num_heads, dropout=self.dropout_rate, name="cross_attention", dtype=self.dtype_policy
        )
        self.cross_attention_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="cross_attention_norm", dtype=self.dtype_policy)
        self.cross_attention_dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)
        self.feed_forward = PositionwiseFeedForward(self.d_model, self.dff, name="feed_forward", dtype=self.dtype_policy)
        self.feed_forward_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="feed_forward_norm", dtype=self.dtype_policy)
        self.feed_forward_dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, inputs_shape, encoder_output_shape=None):
        encoder_output_shape = inputs_shape if encoder_output_shape is None else encoder_output_shape
        self.self_attention.build(inputs_shape)
        self.cross_attention.build(inputs_shape, encoder_output_shape)
        for sublayer in (self.self_attention_norm, self.cross_attention_norm, self.feed_forward, self.feed_forward_norm):
            sublayer.build(inputs_shape)
        self.built = True

    def call(
        self,
        inputs,
        encoder_output=None,
        encoder_padding_mask=None,
        decoder_padding_mask=None,
        self_attention_mask=None,
        return_attention_scores=False,
        training=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
    ):
        # In training, everything but the attention scores runs on the real tokens only (token_packing.py).
        packing = TokenPacking.for_call(decoder_padding_mask, training) if self_attention_cache is None else None
        encoder_packing = None
        if packing is not None and cross_attention_cache is None:
            encoder_packing = TokenPacking.for_call(encoder_padding_mask, training)
        x = pack(inputs, packing)
        if self_attention_mask is None:
            self_attention_mask = create_look_ahead_mask(ops.shape(inputs)[1])
            if decoder_padding_mask is not None:
                self_attention_mask = ops.logical_and(self_attention_mask, decoder_padding_mask)

        h = sublayer_input(x, self.self_attention_norm, self.norm_first)
        self_outputs = self.self_attention(
            h,
            h,
            attention_mask=self_attention_mask,
            return_attention_scores=True,
            training=training,
            cache=self_attention_cache,
            cache_update_index=self_attention_cache_update_index,
            query_packing=packing,
            value_packing=packing,
        )
        attended, self_weights = self_outputs[0], self_outputs[1]
        x = add_and_norm(x, attended, self.self_attention_dropout, self.self_attention_norm, self.norm_first, training)

        h = sublayer_input(x, self.cross_attention_norm, self.norm_first)
        attended, cross_weights = self.cross_attention(
            h,
            pack(encoder_output, encoder_packing),
            attention_mask=encoder_padding_mask,
            return_attention_scores=True,
            training=training,
            cache=cross_attention_cache,
            query_packing=packing,
            value_packing=encoder_packing,
        )[:2]
        x = add_and_norm(x, attended, self.cross_attention_dropout, self.cross_attention_norm, self.norm_first, training)

        h = sublayer_input(x, self.feed_forward_norm, self.norm_first)
        x = add_and_norm(x, self.feed_forward(h), self.feed_forward_dropout, self.feed_forward_norm, self.norm_first, training)

        results = (unpack(x, packing),)
        if return_attention_scores:
            results += ((self_weights, cross_weights),)
        if self_attention_cache is not None:
            results += (self_outputs[2],)
        return results[0] if len(results) == 1 else results

    def get_config(self):
        return {
            **super().get_config(),
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "dff": self.dff,
            "dropout_rate": self.dropout_rate,
            "norm_first": self.norm_first,
        }
