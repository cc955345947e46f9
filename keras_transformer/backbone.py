"""`TransformerBackbone`: the encoder-decoder Transformer as a keras-hub `Backbone`, assembled from our layers.

    encoder_inputs -> embedding * sqrt(d_model) + positional encoding -> dropout -> N x EncoderLayer
    decoder_inputs -> embedding * sqrt(d_model) + positional encoding -> dropout -> N x DecoderLayer
                   -> linear projection to the target vocabulary -> logits (float32, no softmax)

The forward pass is written once, as the methods `encode` and `decode`. `__init__` calls them on symbolic inputs to
build the functional model; attention plots and incremental decoding call the very same methods on real tensors,
so they can never drift apart. Every layer is an attribute (`encoder_layers`, `decoder_layers`, `source_embedding`,
...), and every layer gets the backbone's `dtype`, so mixed precision is one constructor argument.
"""

import contextlib
import gc
import warnings

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_transformer.config import TransformerConfig
from keras_transformer.layers import DecoderLayer, EncoderLayer, PositionalEncoding, TokenEmbedding
from keras_transformer.masks import create_padding_mask


@contextlib.contextmanager
def _one_garbage_collection():
    """Keras' `Layer.__delattr__` runs `gc.collect()` after each variable it deletes, and `quantize` deletes the float
    kernel of every dense layer: about 0.2 s each in a process that holds TensorFlow (6 s for the tiny preset's 33
    layers). Inside this block those calls do nothing; one collection at the end frees the same memory."""
    collect = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = collect
        collect()


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerBackbone(keras_hub.models.Backbone):
    """The paper's Transformer: token ids in, float32 logits out.

    Args: the fields of `TransformerConfig` (see there), plus
        dtype: the dtype policy of every layer, e.g. `"float32"` or `"mixed_bfloat16"` (weights stay float32;
            the logits are always float32). None: Keras' global policy.

    Inputs: `encoder_inputs` int32 `[batch, src_len]` (or float32 `[batch, src_len, encoder_input_dim]` when
    `encoder_input_dim` is set) and `decoder_inputs` int32 `[batch, tgt_len]` (START + target, teacher forcing).
    Output: logits `[batch, tgt_len, tgt_vocab_size]`. Padding and look-ahead masks are built from the ids.

    Example:
    >>> backbone = TransformerBackbone.from_transformer_config(
    ...     TransformerConfig.from_preset("tiny", src_vocab_size=100, tgt_vocab_size=120))
    >>> tuple(backbone({"encoder_inputs": keras.ops.ones((2, 7), "int32"),
    ...                 "decoder_inputs": keras.ops.ones((2, 5), "int32")}).shape)
    (2, 5, 120)
    >>> TransformerBackbone.from_config(backbone.get_config()).count_params() == backbone.count_params()
    True

    References: Vaswani et al., "Attention Is All You Need", 2017.
    """

    def __init__(
        self,
        num_layers=6,
        d_model=512,
        num_heads=8,
        dff=2048,
        dropout_rate=0.1,
        src_vocab_size=8000,
        tgt_vocab_size=8000,
        max_length=256,
        pad_id=0,
        share_embeddings=False,
        norm_first=False,
        encoder_input_dim=None,
        dtype=None,
        **kwargs,
    ):
        config = TransformerConfig(
            num_layers=num_layers, d_model=d_model, num_heads=num_heads, dff=dff, dropout_rate=dropout_rate,
            src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, max_length=max_length, pad_id=pad_id,
            share_embeddings=share_embeddings, norm_first=norm_first, encoder_input_dim=encoder_input_dim,
        )  # fmt: skip
        c = config

        # === Layers ===
        if c.share_embeddings:
            self.source_embedding = TokenEmbedding(c.tgt_vocab_size, c.d_model, input_name="token ids", dtype=dtype, name="shared_embedding")
            self.target_embedding = self.source_embedding
            self.output_projection = None  # the shared embedding, reversed
        else:
            if c.encoder_input_dim is None:
                self.source_embedding = TokenEmbedding(c.src_vocab_size, c.d_model, input_name="encoder_inputs", dtype=dtype, name="source_embedding")
            else:
                self.source_embedding = keras.layers.Dense(c.d_model, dtype=dtype, name="source_projection")
            self.target_embedding = TokenEmbedding(c.tgt_vocab_size, c.d_model, input_name="decoder_inputs", dtype=dtype, name="target_embedding")
            self.output_projection = keras.layers.Dense(c.tgt_vocab_size, dtype=dtype, name="output_projection")
        self.encoder_positional_encoding = PositionalEncoding(c.max_length, c.d_model, dtype=dtype, name="encoder_positional_encoding")
        self.decoder_positional_encoding = PositionalEncoding(c.max_length, c.d_model, dtype=dtype, name="decoder_positional_encoding")
        self.encoder_dropout = keras.layers.Dropout(c.dropout_rate, dtype=dtype, name="encoder_dropout")
        self.decoder_dropout = keras.layers.Dropout(c.dropout_rate, dtype=dtype, name="decoder_dropout")
        # Pre-LN stacks end with a LayerNorm on each side; post-LN (the paper) normalizes inside every layer.
        self.encoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype, name="encoder_norm") if c.norm_first else None
        self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype, name="decoder_norm") if c.norm_first else None
        sizes = dict(d_model=c.d_model, num_heads=c.num_heads, dff=c.dff, dropout_rate=c.dropout_rate, norm_first=c.norm_first)
        self.encoder_layers = [EncoderLayer(**sizes, dtype=dtype, name=f"encoder_layer_{i}") for i in range(c.num_layers)]
        self.decoder_layers = [DecoderLayer(**sizes, dtype=dtype, name=f"decoder_layer_{i}") for i in range(c.num_layers)]
        # Logits leave the model in float32 even under a mixed-precision policy.
        self.logits_layer = keras.layers.Activation("linear", dtype="float32", name="logits")
        self._transformer_config = config

        # === Functional model ===
        if c.encoder_input_dim is None:
            encoder_inputs = keras.Input(shape=(None,), dtype="int32", name="encoder_inputs")
        else:
            encoder_inputs = keras.Input(shape=(None, c.encoder_input_dim), dtype="float32", name="encoder_inputs")
        decoder_inputs = keras.Input(shape=(None,), dtype="int32", name="decoder_inputs")
        encoder_output, encoder_padding_mask = self.encode(encoder_inputs)
        logits = self.decode(decoder_inputs, encoder_output, encoder_padding_mask)
        super().__init__(
            inputs={"encoder_inputs": encoder_inputs, "decoder_inputs": decoder_inputs},
            outputs=logits,
            dtype=dtype,
            **kwargs,
        )

    @classmethod
    def from_transformer_config(cls, config: TransformerConfig, **kwargs) -> "TransformerBackbone":
        """A backbone with the hyperparameters of `config`; `kwargs` (`dtype`, `name`) go to the constructor."""
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"expected a TransformerConfig, got {type(config).__name__}.")
        return cls(**config.to_dict(), **kwargs)

    @property
    def config(self) -> TransformerConfig:
        """The hyperparameters as a `TransformerConfig`."""
        return self._transformer_config

    def get_config(self):
        return {**super().get_config(), **self._transformer_config.to_dict()}

    # === The forward pass, written once ===
    def encode(self, encoder_inputs, training=None, return_attention_scores=False):
        """Encoder stack: `(encoder_output, encoder_padding_mask)` (+ a list of per-layer self-attention weights
        `[batch, heads, src_len, src_len]` if asked). Feature-vector inputs have no padding mask (None)."""
        c = self._transformer_config
        padding_mask = create_padding_mask(encoder_inputs, c.pad_id) if c.encoder_input_dim is None else None
        x = self.source_embedding(encoder_inputs)
        x = self.encoder_positional_encoding(x)
        x = self.encoder_dropout(x, training=training)
        weights = []
        for layer in self.encoder_layers:
            x, w = layer(x, padding_mask=padding_mask, return_attention_scores=True, training=training)
            weights.append(w)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return (x, padding_mask, weights) if return_attention_scores else (x, padding_mask)

    def decode(self, decoder_inputs, encoder_output, encoder_padding_mask, training=None, return_attention_scores=False):
        """Decoder stack over the whole (teacher-forced) target: float32 logits (+ a list of per-layer
        `(self_attention, cross_attention)` weights if asked)."""
        x = self.target_embedding(decoder_inputs)
        x = self.decoder_positional_encoding(x)
        x = self.decoder_dropout(x, training=training)
        decoder_padding_mask = create_padding_mask(decoder_inputs, self._transformer_config.pad_id)
        weights = []
        for layer in self.decoder_layers:
            x, w = layer(
                x,
                encoder_output,
                encoder_padding_mask=encoder_padding_mask,
                decoder_padding_mask=decoder_padding_mask,
                return_attention_scores=True,
                training=training,
            )
            weights.append(w)
        logits = self.project_to_vocabulary(x)
        return (logits, weights) if return_attention_scores else logits

    def project_to_vocabulary(self, decoder_output):
        """Final LayerNorm (pre-LN only), pre-softmax projection (shared or not), float32 logits."""
        if self.decoder_norm is not None:
            decoder_output = self.decoder_norm(decoder_output)
        if self.output_projection is None:
            logits = self.target_embedding(decoder_output, reverse=True)
        else:
            logits = self.output_projection(decoder_output)
        return self.logits_layer(logits)

    def attention_weights(self, encoder_inputs, decoder_inputs):
        """All attention weights for one batch, for plots and the demo: a dict with lists (one entry per layer) of
        `[batch, heads, query_len, key_len]` numpy arrays under `encoder_self_attention`,
        `decoder_self_attention` and `cross_attention`, plus the `logits`."""
        encoder_output, padding_mask, encoder_weights = self.encode(encoder_inputs, training=False, return_attention_scores=True)
        logits, decoder_weights = self.decode(
            decoder_inputs, encoder_output, padding_mask, training=False, return_attention_scores=True
        )
        return {
            "encoder_self_attention": [ops.convert_to_numpy(w) for w in encoder_weights],
            "decoder_self_attention": [ops.convert_to_numpy(w[0]) for w in decoder_weights],
            "cross_attention": [ops.convert_to_numpy(w[1]) for w in decoder_weights],
            "logits": ops.convert_to_numpy(logits),
        }

    def with_dtype(self, dtype) -> "TransformerBackbone":
        """This backbone computing under another dtype policy (e.g. `"float32"` for export or fast CPU decoding
        of a model trained in `mixed_bfloat16`): itself when the policy is already `dtype`, else a new backbone
        with a copy of the weights."""
        if self.dtype_policy.name == keras.dtype_policies.get(dtype).name:
            return self
        return self._copy(dtype)

    def int8_copy(self) -> "TransformerBackbone":
        """A float32 copy of this backbone whose dense layers compute in int8 (Keras' `Model.quantize("int8")`):
        each kernel int8 with one scale per output unit, each call's inputs quantized per row on the fly, products
        in int32, results float32. The embeddings, LayerNorms and attention products stay float32. For CPU decoding
        (`Translator(decode_precision="int8")`); tokens can differ from float32. The backbone itself is unchanged."""
        copy = self._copy("float32")  # always a new backbone: quantize changes the layers it is called on
        with warnings.catch_warnings(), _one_garbage_collection():
            # Keras names every layer without an int8 form (LayerNorm, our embeddings, ...): they stay float32.
            warnings.filterwarnings("ignore", message=r".*does not have a `quantize` method")
            copy.quantize("int8")
        return copy

    def _copy(self, dtype):
        """A new backbone of the same config under the dtype policy `dtype`, with a copy of the weights."""
        copy = type(self).from_config({**self.get_config(), "dtype": dtype})
        copy.set_weights(self.get_weights())
        return copy

    def _standardize_inputs(self, inputs):
        # Float token ids raise a clear error instead of being cast (and truncated) to int32 silently.
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
