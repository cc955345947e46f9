"""`TransformerSeq2SeqLMPreprocessor`: the one path from text to the model's ids, and back.

The rules, written only here (training pipeline, `Translator`, `generate`, SavedModel, TFLite and plots use them):

    encoder_inputs = source ids + END        (cut to max_length - 1 ids first, with a warning where Python sees it)
    decoder_inputs = START + target ids
    labels         = target ids + END

Everything is 0-padded (PAD_ID). The source and the target have their own SentencePiece tokenizers.

Format placeholders (`%s`, `%1`, `{0}`, ...; `keras_transformer.data.placeholders`) are replaced by the reserved
tokens ⦅1⦆, ⦅2⦆, ... before tokenization and put back after detokenization, whenever both tokenizers hold those
tokens as pieces (every tokenizer trained by this version; models of 0.1 run without protection).
"""

from __future__ import annotations

import warnings

import keras
import keras_hub
import tensorflow as tf

from keras_transformer.data import placeholders as placeholder_rules
from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID
from keras_transformer.data.tokenizer import SubwordTokenizer


def pack_encoder(source_ids: tf.RaggedTensor, max_length: int) -> tf.RaggedTensor:
    """Ragged source ids `[batch, None]` -> the encoder's ragged ids: cut to `max_length - 1`, then END."""
    source_ids = tf.cast(source_ids[:, : max_length - 1], tf.int32)
    end = tf.fill(tf.stack([source_ids.nrows(), 1]), tf.constant(END_ID, tf.int32))
    return tf.concat([source_ids, end], axis=1)


def pack_target(target_ids):
    """One target's ids `[n]` (or ragged `[batch, None]`) -> `(decoder_inputs, labels)`: START + ids, ids + END."""
    target_ids = tf.cast(target_ids, tf.int32)
    if isinstance(target_ids, tf.RaggedTensor):
        rows = tf.stack([target_ids.nrows(), 1])
        start, end = tf.fill(rows, START_ID), tf.fill(rows, END_ID)
        return tf.concat([start, target_ids], axis=1), tf.concat([target_ids, end], axis=1)
    return tf.concat([[START_ID], target_ids], axis=0), tf.concat([target_ids, [END_ID]], axis=0)


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerSeq2SeqLMPreprocessor(keras_hub.models.Seq2SeqLMPreprocessor):
    """Turns `{"encoder_text": [...], "decoder_text": [...]}` into `({"encoder_inputs", "decoder_inputs"}, labels)`
    for `fit`, and source strings into encoder ids for generation (`generate_preprocess`); `generate_postprocess`
    turns generated ids back into text.

    Args:
        source_tokenizer, target_tokenizer: `SubwordTokenizer`s. `tokenizer` (keras-hub's name, used by
            `generate` for the END id) is the target tokenizer.
        max_length: the model's `max_length`: longest encoder input and longest decoder input, END/START included.

    Example:
    >>> preprocessor = TransformerSeq2SeqLMPreprocessor(source_tokenizer, target_tokenizer, max_length=64)  # doctest: +SKIP
    >>> x, labels = preprocessor({"encoder_text": ["설정"], "decoder_text": ["Settings"]})  # doctest: +SKIP
    """

    tokenizer_cls = SubwordTokenizer

    def __init__(self, source_tokenizer, target_tokenizer, max_length=64, **kwargs):
        kwargs.pop("tokenizer", None)  # keras-hub passes the single-tokenizer slot; ours are named
        kwargs.pop("encoder_sequence_length", None)
        kwargs.pop("decoder_sequence_length", None)
        super().__init__(tokenizer=None, encoder_sequence_length=max_length, decoder_sequence_length=max_length, **kwargs)
        for name, tokenizer in (("source", source_tokenizer), ("target", target_tokenizer)):
            if not isinstance(tokenizer, SubwordTokenizer):
                raise TypeError(f"{name}_tokenizer must be a SubwordTokenizer, got {type(tokenizer).__name__}.")
            tokenizer.config_file = f"{name}_tokenizer.json"  # its own folder in a preset: assets/<name>_tokenizer/
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.tokenizer = target_tokenizer
        self.max_length = int(max_length)

    def build(self, input_shape=None):
        self.built = True

    # === Placeholders ===
    @property
    def placeholder_ids(self):
        """`(source ids, target ids, raw ids)`: the ids of the placeholder tokens ⦅1⦆ .. ⦅16⦆ in each vocabulary, and
        the target pieces that are raw placeholders (`%s`, `%1`, `{0}`, ...: a protected source never needs them, so
        decoding never emits them); None when the tokenizers do not hold the tokens (then no protection happens)."""
        if self.source_tokenizer.proto is None or self.target_tokenizer.proto is None:
            return None  # vocabularies not loaded yet (a model being deserialized): decide once they are
        if getattr(self, "_placeholder_ids", "unknown") == "unknown":
            try:
                self._placeholder_ids = (
                    tuple(placeholder_rules.placeholder_token_ids(self.source_tokenizer)),
                    tuple(placeholder_rules.placeholder_token_ids(self.target_tokenizer)),
                    tuple(placeholder_rules.raw_placeholder_ids(self.target_tokenizer)),
                )
            except ValueError:
                self._placeholder_ids = None
        return self._placeholder_ids

    def protect(self, texts) -> tuple[list[str], list[list[str]]]:
        """Python: `(protected texts, placeholders of each)`; the texts unchanged without placeholder tokens."""
        if self.placeholder_ids is None:
            return list(texts), [[] for _ in texts]
        pairs = [placeholder_rules.protect(text) for text in texts]
        return [p for p, _ in pairs], [list(found) for _, found in pairs]

    def restore(self, translations, placeholders) -> list[str]:
        """Python: each translation with its source's placeholders put back (`placeholders.restore`)."""
        if self.placeholder_ids is None:
            return list(translations)
        return [placeholder_rules.restore(t, found) for t, found in zip(translations, placeholders)]

    # === The rules ===
    def source_ids_and_placeholders(self, texts):
        """Graph or eager: `(ragged encoder ids [batch, None], ragged placeholders [batch, None])` for a `tf.string`
        `[batch]`: placeholders protected, source ids cut to `max_length - 1`, then END."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if self.placeholder_ids is not None:
            texts, found = placeholder_rules.tf_protect(texts)
        else:
            found = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.string), tf.zeros_like(texts, tf.int64))
        ids = self.source_tokenizer.tokenize(texts)
        return pack_encoder(ids, self.max_length), found

    def source_ids(self, texts) -> tf.RaggedTensor:
        """Ragged encoder ids `[batch, None]` for strings (a list, or a `tf.string` tensor `[batch]`; works in a
        graph): placeholders protected, source ids cut to `max_length - 1`, then END."""
        if isinstance(texts, str):
            texts = [texts]
        return self.source_ids_and_placeholders(texts)[0]

    def restore_in_graph(self, translations, placeholders):
        """The graph version of `restore`, for the SavedModel's string signature."""
        if self.placeholder_ids is None:
            return translations
        return placeholder_rules.tf_restore(translations, placeholders)

    def encode_sources(self, texts, return_placeholders=False):
        """Encoder ids as Python lists (eager), warning once per call about sources that were cut, with the real
        limit in tokens; with `return_placeholders`, also each source's protected placeholders (for `restore`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return ([], []) if return_placeholders else []
        protected, found = self.protect(texts)
        # The packing of `pack_encoder`, on Python lists: as eager ragged ops it took 3 ms per call, most of the
        # time a one-sentence `translate` spent outside the decode loop.
        raw = self.source_tokenizer.tokenize(protected)
        raw = raw.to_list() if isinstance(raw, tf.RaggedTensor) else raw.numpy().tolist()
        keep = self.max_length - 1
        cut = sum(len(row) > keep for row in raw)
        if cut:
            warnings.warn(
                f"{cut} source sentence(s) had more than {keep} tokens (the model's max_length="
                f"{self.max_length} minus END) and were cut to that many.",
                stacklevel=2,
            )
        ids = [[int(i) for i in row[:keep]] + [END_ID] for row in raw]
        return (ids, found) if return_placeholders else ids

    def pair_ids(self, source_text, target_text=None) -> tuple[list[int], list[int]]:
        """`(encoder_ids, decoder_ids)` of one sentence pair as the model reads it in teacher forcing: source ids +
        END, and START + target ids (START alone without a target), each cut to fit `max_length`. For attention
        plots and the demo."""
        encoder_ids = self.encode_sources([source_text])[0]
        target_ids = []
        if target_text is not None:
            target_ids = self.target_tokenizer.encode(self.protect([target_text])[0][0])[: self.max_length - 1]
        decoder_ids, _ = pack_target(tf.constant(target_ids, tf.int32))
        return encoder_ids, [int(i) for i in decoder_ids.numpy()]

    # === keras-hub's preprocessor interface ===
    def call(self, x, y=None, sample_weight=None):
        # Training on strings protects each side on its own (in the graph): right whenever the target has its
        # placeholders in the source's order. The main job pairs them up in Python (`placeholders.protect_pair`),
        # which also learns reordering.
        encoder_inputs = self.source_ids(x["encoder_text"]).to_tensor(default_value=PAD_ID)
        decoder_text = x["decoder_text"]
        if self.placeholder_ids is not None:
            decoder_text, _ = placeholder_rules.tf_protect(tf.convert_to_tensor(decoder_text, tf.string))
        target_ids = self.target_tokenizer.tokenize(decoder_text)
        if not isinstance(target_ids, tf.RaggedTensor):
            target_ids = tf.RaggedTensor.from_tensor(target_ids[tf.newaxis])
        decoder_inputs, labels = pack_target(target_ids[:, : self.max_length - 1])
        inputs = {
            "encoder_inputs": encoder_inputs,
            "decoder_inputs": decoder_inputs.to_tensor(default_value=PAD_ID),
        }
        return keras.utils.pack_x_y_sample_weight(inputs, labels.to_tensor(default_value=PAD_ID), sample_weight)

    def generate_preprocess(self, x, **kwargs):
        """Source strings (or `{"encoder_text": ...}`) -> `{"encoder_inputs": int32 [batch, len]}`, 0-padded."""
        texts = x["encoder_text"] if isinstance(x, dict) else x
        return {"encoder_inputs": self.source_ids(texts).to_tensor(default_value=PAD_ID)}

    def generate_postprocess(self, x):
        """Generated ids `[batch, steps]` (or `{"decoder_token_ids": ...}`) -> `tf.string` `[batch]`, stopping at END."""
        ids = x["decoder_token_ids"] if isinstance(x, dict) else x
        return self.target_tokenizer.detokenize(ids)

    def get_config(self):
        config = super().get_config()
        for key in ("tokenizer", "encoder_sequence_length", "decoder_sequence_length"):
            config.pop(key, None)
        config.update(
            source_tokenizer=keras.layers.serialize(self.source_tokenizer),
            target_tokenizer=keras.layers.serialize(self.target_tokenizer),
            max_length=self.max_length,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("source_tokenizer", "target_tokenizer"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return cls(**config)
