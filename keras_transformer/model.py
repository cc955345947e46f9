"""`build_transformer`: the encoder-decoder Transformer assembled from its layers with the Keras functional API.

    encoder_inputs -> embedding * sqrt(d_model) + positional encoding -> dropout -> N x EncoderLayer
    decoder_inputs -> embedding * sqrt(d_model) + positional encoding -> dropout -> N x DecoderLayer
                   -> linear projection to the target vocabulary -> logits (float32, no softmax)

The forward pass is written once, as `encode` and `decode` below. `build_transformer` calls them on symbolic
inputs to build the functional model; plotting and incremental decoding call the very same functions on real
tensors with the layers of a trained model (looked up by name), so they can never drift apart.
"""

import keras
import numpy as np
from keras import ops

from keras_transformer.config import TransformerConfig
from keras_transformer.layers import (
    DecoderLayer,
    EncoderLayer,
    PositionalEncoding,
    TokenEmbedding,
)
from keras_transformer.masks import create_padding_mask


def build_transformer(config: TransformerConfig, name="transformer") -> keras.Model:
    """The paper's Transformer as a functional `keras.Model`.

    Inputs: `encoder_inputs` int32 `[batch, src_len]` (or float32 `[batch, src_len, encoder_input_dim]` when
    `config.encoder_input_dim` is set) and `decoder_inputs` int32 `[batch, tgt_len]` (START + target,
    teacher forcing). Output: logits `[batch, tgt_len, tgt_vocab_size]`, float32 even under mixed precision.
    Padding and look-ahead masks are built from the ids inside the model.

    Example:
    >>> config = TransformerConfig.from_preset("tiny", src_vocab_size=100, tgt_vocab_size=120)
    >>> model = build_transformer(config)
    >>> model({"encoder_inputs": keras.ops.ones((2, 7), "int32"),
    ...        "decoder_inputs": keras.ops.ones((2, 5), "int32")}).shape
    (2, 5, 120)
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"build_transformer expects a TransformerConfig, got {type(config).__name__}.")
    layers = _create_layers(config)
    if config.encoder_input_dim is None:
        encoder_inputs = keras.Input(shape=(None,), dtype="int32", name="encoder_inputs")
    else:
        encoder_inputs = keras.Input(shape=(None, config.encoder_input_dim), dtype="float32", name="encoder_inputs")
    decoder_inputs = keras.Input(shape=(None,), dtype="int32", name="decoder_inputs")

    encoder_output, encoder_padding_mask = encode(layers.get, config, encoder_inputs)
    logits = decode(layers.get, config, decoder_inputs, encoder_output, encoder_padding_mask)
    return Transformer(
        inputs={"encoder_inputs": encoder_inputs, "decoder_inputs": decoder_inputs}, outputs=logits, name=name
    )


@keras.saving.register_keras_serializable(package="keras_transformer")
class Transformer(keras.Model):
    """The functional model that `build_transformer` returns: a plain functional `keras.Model` whose only
    addition is a check of its inputs, so that float token ids raise a clear error instead of being cast
    (and truncated) to int32 silently."""

    def _standardize_inputs(self, inputs):
        if isinstance(inputs, dict):
            for key, reference in self._inputs_struct.items():
                value = inputs.get(key)
                if value is None or "int" not in str(reference.dtype):
                    continue
                dtype = keras.backend.standardize_dtype(getattr(value, "dtype", None) or np.asarray(value).dtype)
                if "int" not in dtype:
                    raise ValueError(
                        f"{key} must hold integer token ids, got dtype {dtype}. Tokenize the text and pass int32 "
                        "ids (e.g. `np.asarray(ids, dtype='int32')`)."
                    )
        return super()._standardize_inputs(inputs)


def _create_layers(config):
    c = config
    layers = {}
    if c.share_embeddings:
        shared = TokenEmbedding(c.tgt_vocab_size, c.d_model, input_name="token ids", name="shared_embedding")
        layers["source_embedding"] = layers["target_embedding"] = shared
    else:
        if c.encoder_input_dim is None:
            layers["source_embedding"] = TokenEmbedding(
                c.src_vocab_size, c.d_model, input_name="encoder_inputs", name="source_embedding"
            )
        else:
            layers["source_embedding"] = keras.layers.Dense(c.d_model, name="source_projection")
        layers["target_embedding"] = TokenEmbedding(
            c.tgt_vocab_size, c.d_model, input_name="decoder_inputs", name="target_embedding"
        )
        layers["output_projection"] = keras.layers.Dense(c.tgt_vocab_size, name="output_projection")
    for side in ("encoder", "decoder"):
        layers[f"{side}_positional_encoding"] = PositionalEncoding(
            c.max_length, c.d_model, name=f"{side}_positional_encoding"
        )
        layers[f"{side}_dropout"] = keras.layers.Dropout(c.dropout_rate, name=f"{side}_dropout")
        if c.norm_first:
            layers[f"{side}_norm"] = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{side}_norm")
    for i in range(c.num_layers):
        kwargs = dict(d_model=c.d_model, num_heads=c.num_heads, dff=c.dff, dropout_rate=c.dropout_rate, norm_first=c.norm_first)
        layers[f"encoder_layer_{i}"] = EncoderLayer(**kwargs, name=f"encoder_layer_{i}")
        layers[f"decoder_layer_{i}"] = DecoderLayer(**kwargs, name=f"decoder_layer_{i}")
    # Logits leave the model in float32 even under a mixed-precision policy.
    layers["logits"] = keras.layers.Activation("linear", dtype="float32", name="logits")
    return layers


def encode(get_layer, config, encoder_inputs, training=None, return_attention_scores=False):
    """Encoder stack. Returns `(encoder_output, encoder_padding_mask)` (+ a list of per-layer self-attention
    weights if asked). `get_layer` maps a layer name to the layer (`model.get_layer` for a built model)."""
    if config.encoder_input_dim is None:
        padding_mask = create_padding_mask(encoder_inputs, config.pad_id)
    else:
        padding_mask = None  # feature vectors: every position is real
    x = get_layer("source_embedding")(encoder_inputs)
    x = get_layer("encoder_positional_encoding")(x)
    x = get_layer("encoder_dropout")(x, training=training)
    weights = []
    for i in range(config.num_layers):
        x, w = get_layer(f"encoder_layer_{i}")(
            x, padding_mask=padding_mask, return_attention_scores=True, training=training
        )
        weights.append(w)
    if config.norm_first:
        x = get_layer("encoder_norm")(x)
    return (x, padding_mask, weights) if return_attention_scores else (x, padding_mask)


def decode(
    get_layer,
    config,
    decoder_inputs,
    encoder_output,
    encoder_padding_mask,
    training=None,
    return_attention_scores=False,
):
    """Decoder stack over the whole (teacher-forced) target. Returns float32 logits (+ a list of per-layer
    `(self_attention, cross_attention)` weights if asked)."""
    x = embed_target(get_layer, decoder_inputs)
    x = get_layer("decoder_positional_encoding")(x)
    x = get_layer("decoder_dropout")(x, training=training)
    decoder_padding_mask = create_padding_mask(decoder_inputs, config.pad_id)
    weights = []
    for i in range(config.num_layers):
        x, w = get_layer(f"decoder_layer_{i}")(
            x,
            encoder_output,
            encoder_padding_mask=encoder_padding_mask,
            decoder_padding_mask=decoder_padding_mask,
            return_attention_scores=True,
            training=training,
        )
        weights.append(w)
    logits = project_to_vocabulary(get_layer, config, x)
    return (logits, weights) if return_attention_scores else logits


def embed_target(get_layer, decoder_inputs):
    return get_layer("target_embedding")(decoder_inputs)


def project_to_vocabulary(get_layer, config, decoder_output):
    """Final LayerNorm (pre-LN only), pre-softmax projection (shared or not), float32 logits."""
    if config.norm_first:
        decoder_output = get_layer("decoder_norm")(decoder_output)
    if config.share_embeddings:
        logits = get_layer("target_embedding")(decoder_output, reverse=True)
    else:
        logits = get_layer("output_projection")(decoder_output)
    return get_layer("logits")(logits)


_ALIASES = {
    "source_embedding": ("shared_embedding", "source_projection"),
    "target_embedding": ("shared_embedding",),
}


def layer_getter(model):
    """`name -> layer` for a built model, for `encode` / `decode`. The names are those of `_create_layers`;
    `source_embedding` also finds the shared embedding or the feature projection, `target_embedding` the shared
    embedding."""
    names = {layer.name for layer in model.layers}

    def get_layer(name):
        for candidate in (name, *_ALIASES.get(name, ())):
            if candidate in names:
                return model.get_layer(candidate)
        return model.get_layer(name)  # raises Keras' own "No such layer" error

    return get_layer


def attention_weights(model, config, encoder_inputs, decoder_inputs):
    """All attention weights of a model for one batch, for plotting: a dict with lists (one entry per layer) of
    `[batch, heads, query_len, key_len]` numpy arrays under `encoder_self_attention`,
    `decoder_self_attention` and `cross_attention`, plus the `logits`."""
    get_layer = layer_getter(model)
    encoder_output, padding_mask, encoder_weights = encode(
        get_layer, config, encoder_inputs, training=False, return_attention_scores=True
    )
    logits, decoder_weights = decode(
        get_layer, config, decoder_inputs, encoder_output, padding_mask, training=False, return_attention_scores=True
    )
    return {
        "encoder_self_attention": [ops.convert_to_numpy(w) for w in encoder_weights],
        "decoder_self_attention": [ops.convert_to_numpy(w[0]) for w in decoder_weights],
        "cross_attention": [ops.convert_to_numpy(w[1]) for w in decoder_weights],
        "logits": ops.convert_to_numpy(logits),
    }
