"""`build_transformer`: the paper's Transformer from a `TransformerConfig`.

The model itself is `keras_transformer.backbone.TransformerBackbone` (a keras-hub `Backbone`); this function is the
short way to build one, and `keras_transformer.TransformerSeq2SeqLM` wraps it with its tokenizers for text in,
text out.
"""

from keras_transformer.backbone import TransformerBackbone
from keras_transformer.config import TransformerConfig


def build_transformer(config: TransformerConfig, name="transformer", dtype=None) -> TransformerBackbone:
    """The paper's Transformer as a functional Keras model (a `TransformerBackbone`).

    Inputs: `encoder_inputs` int32 `[batch, src_len]` (or float32 `[batch, src_len, encoder_input_dim]` when
    `config.encoder_input_dim` is set) and `decoder_inputs` int32 `[batch, tgt_len]` (START + target,
    teacher forcing). Output: logits `[batch, tgt_len, tgt_vocab_size]`, float32 even under mixed precision.
    `dtype`: the layers' dtype policy (e.g. `"mixed_bfloat16"`); None = Keras' global policy.

    Example:
    >>> import keras
    >>> config = TransformerConfig.from_preset("tiny", src_vocab_size=100, tgt_vocab_size=120)
    >>> model = build_transformer(config)
    >>> tuple(model({"encoder_inputs": keras.ops.ones((2, 7), "int32"),
    ...              "decoder_inputs": keras.ops.ones((2, 5), "int32")}).shape)
    (2, 5, 120)
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"build_transformer expects a TransformerConfig, got {type(config).__name__}.")
    return TransformerBackbone.from_transformer_config(config, name=name, dtype=dtype)


def attention_weights(model, config, encoder_inputs, decoder_inputs):
    """All attention weights of `model` (a `TransformerBackbone`) for one batch: see
    `TransformerBackbone.attention_weights`. `config` must be the model's own."""
    if config != model.config:
        raise ValueError("attention_weights: config is not the model's own config.")
    return model.attention_weights(encoder_inputs, decoder_inputs)
