"""SentencePiece subword tokenizer that runs inside the TensorFlow graph.

Training uses the ``sentencepiece`` Python package (in memory, no files);
tokenizing and detokenizing use ``tensorflow_text.SentencepieceTokenizer``,
a TF op that carries the serialized model, so the very same tokenizer works
eagerly, inside ``tf.function`` / ``tf.data`` and inside an exported
SavedModel. :class:`SubwordTokenizer` is a keras-hub tokenizer layer
(``keras_hub.tokenizers.SentencePieceTokenizer``): a model, preset or export
that holds it saves the SentencePiece model as its own asset.

Special ids are fixed for the whole project:

==========  ==  ==========
``PAD_ID``   0  ``<pad>``
``UNK_ID``   1  ``<unk>``
``START_ID`` 2  ``<s>``  (SentencePiece bos)
``END_ID``   3  ``</s>`` (SentencePiece eos)
==========  ==  ==========

Defaults chosen for the bundled ko-en corpus (short UI strings):

* ``normalization_rule_name="identity"``: the text is not rewritten (no NFKC
  folding of full-width forms, ellipses, ...), so ``detokenize(tokenize(x)) == x``
  for text that was normalised with :func:`~keras_transformer.data.corpus.normalize_text`
  (NFC + single spaces). SentencePiece still collapses whitespace runs itself.
* ``byte_fallback=True`` with ``character_coverage=0.9995``: rare characters
  (rare Hangul syllables, symbols) are spelled as UTF-8 byte pieces instead of
  ``<unk>``, so nothing is lost and the vocabulary is not spent on them.
* Common format placeholders (``%s``, ``%d``, ``%1``, ``{0}``, ``%(`` ...) are
  user-defined symbols: always one piece each, so a model can learn to copy them.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import keras
import keras_hub
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops import sentencepiece_tokenizer as _tf_text_sp

# Defined once for the whole package in special_ids; re-exported here.
from keras_transformer.data.placeholders import PLACEHOLDER_TOKENS
from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID, UNK_ID

__all__ = [
    "DEFAULT_USER_DEFINED_SYMBOLS",
    "END_ID",
    "PAD_ID",
    "START_ID",
    "UNK_ID",
    "SubwordTokenizer",
]

# Always kept as single pieces. Chosen from the most frequent printf/Qt/Python
# placeholders in the bundled training data (``%s`` alone is in 60k lines).
# And the reserved placeholder tokens ⦅1⦆ .. ⦅16⦆ (keras_transformer.data.placeholders), which take the place of
# the format placeholders in training data and at translation time.
DEFAULT_USER_DEFINED_SYMBOLS: tuple[str, ...] = (
    "%s", "%d", "%u", "%i", "%c", "%x", "%ld", "%lu", "%zu", "%%",
    "%1", "%2", "%3", "%4", "%5", "%6", "%7", "%8", "%9",
    "{0}", "{1}", "{2}", "{3}", "{}", "%(",
) + PLACEHOLDER_TOKENS  # fmt: skip


def _as_string_tensor(texts) -> tf.Tensor | tf.RaggedTensor:
    if isinstance(texts, (tf.Tensor, tf.RaggedTensor)):
        if texts.dtype != tf.string:
            raise TypeError(f"tokenize() expects strings, got a {texts.dtype.name} tensor")
        return texts
    if isinstance(texts, (str, bytes)):
        return tf.constant(texts, dtype=tf.string)
    texts = list(texts)
    if not texts:
        return tf.zeros([0], dtype=tf.string)
    return tf.constant(texts, dtype=tf.string)


class _SharedModelResource(_tf_text_sp._SentencepieceModelResource):
    """The SentencePiece model resource, under a ``shared_name``.

    ``tf_text.SentencepieceTokenizer`` creates its model resource private to the
    creating op kernel (see the TODO b/318839908 in tensorflow_text): anything that
    clears TF's eager kernel cache -- ``tf.random.set_seed``,
    ``keras.utils.set_random_seed`` -- destroys it, and every later call fails
    with ``NotFoundError: Resource localhost/_0_SentencepieceOp/... does not exist``.
    A resource with a shared name lives in the resource manager instead and
    survives. The name is derived from the model bytes, so tokenizers of the same
    model share one resource; resources are never freed (a few hundred KB each).
    """

    def __init__(self, model: bytes):
        self._shared_name = "keras_transformer_sentencepiece_" + hashlib.sha256(model).hexdigest()[:24]
        super().__init__(model, None)

    def _create_resource(self):
        with tf.name_scope("SentencepieceModel"):
            return _tf_text_sp.gen_sentencepiece_tokenizer.sentencepiece_op(
                model=self._model, shared_name=self._shared_name
            )


class _SentencepieceOps(tf_text.SentencepieceTokenizer):
    """``tf_text.SentencepieceTokenizer`` (deterministic settings) over a :class:`_SharedModelResource`."""

    def __init__(self, model: bytes):
        # What SentencepieceTokenizer.__init__ does, minus creating its kernel-owned resource.
        super(tf_text.SentencepieceTokenizer, self).__init__()  # pylint: disable=bad-super-call
        self.nbest_size = 0
        self.alpha = 1.0
        self.out_type = tf.int32
        self.reverse = False
        self.add_bos = False
        self.add_eos = False
        self.return_nbest = False
        self._model_resource = _SharedModelResource(model)


@keras.saving.register_keras_serializable(package="keras_transformer")
class SubwordTokenizer(keras_hub.tokenizers.SentencePieceTokenizer):
    """A SentencePiece model as a keras-hub tokenizer layer, with in-graph ``tokenize`` / ``detokenize``.

    It is a ``keras_hub.tokenizers.SentencePieceTokenizer``: it tokenizes inside ``tf.data`` and ``tf.function``,
    saves its model as an asset of whatever holds it (a ``.keras`` file, a keras-hub preset), and has keras-hub's
    ``start_token_id`` / ``end_token_id`` / ``pad_token_id``. On top of it: the special ids are checked (0-3), the
    TF op's resource survives ``tf.random.set_seed``, decoded ids stop at END, and :meth:`train` learns a
    vocabulary in one call.

    Build one with :meth:`train`, :meth:`load` (a ``.model`` file) or ``SubwordTokenizer(proto=bytes)``.
    ``config_file`` names the tokenizer inside a preset (``source_tokenizer.json``, ``target_tokenizer.json``): its
    model is saved under ``assets/<config_file without .json>/``.

    Example:
    >>> tokenizer = SubwordTokenizer.train(["a b c", "b c d"] * 50, vocab_size=300)  # doctest: +SKIP
    >>> tokenizer.decode(tokenizer.encode("a b"))  # doctest: +SKIP
    'a b'
    """

    def __init__(self, proto=None, config_file="tokenizer.json", **kwargs):
        self._add_special_token("<pad>", "pad_token")
        self._add_special_token("<s>", "start_token")
        self._add_special_token("</s>", "end_token")
        super().__init__(proto=proto, config_file=config_file, **kwargs)
        # Set by train(): wall-clock training time and number of sentences used.
        self.training_seconds: float | None = None
        self.num_training_sentences: int | None = None

    def set_proto(self, proto):
        if isinstance(proto, (bytes, bytearray)):
            proto = bytes(proto)
            processor = spm.SentencePieceProcessor()
            try:
                processor.LoadFromSerializedProto(proto)
            except Exception as error:  # noqa: BLE001 - sentencepiece raises plain RuntimeError/OSError
                raise ValueError(f"not a valid SentencePiece model: {error}") from error
            found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
            if found != (PAD_ID, UNK_ID, START_ID, END_ID):
                raise ValueError(
                    "this SentencePiece model uses special ids pad/unk/bos/eos = "
                    f"{found}; keras_transformer needs {(PAD_ID, UNK_ID, START_ID, END_ID)}. "
                    "Train it with SubwordTokenizer.train() or with pad_id=0 unk_id=1 bos_id=2 eos_id=3."
                )
        super().set_proto(proto)

    def _set_proto_tf(self, proto):
        self._sentence_piece = _SentencepieceOps(proto)

    # ------------------------------------------------------------------ building
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        model_type: str = "unigram",
        character_coverage: float | None = None,
        byte_fallback: bool = True,
        user_defined_symbols: Sequence[str] = DEFAULT_USER_DEFINED_SYMBOLS,
        normalization_rule_name: str = "identity",
        seed: int = 0,
        max_sentences: int | None = None,
        num_threads: int = 2,
        verbose: bool = False,
        **options,
    ) -> "SubwordTokenizer":
        """Trains a SentencePiece model in memory.

        Args:
            texts: Training sentences (already normalised; empty ones are dropped).
            vocab_size: Number of pieces including the 4 special ones (and the 256
                byte pieces with ``byte_fallback``).
            model_type: ``"unigram"`` (default) or ``"bpe"`` (also ``"char"``, ``"word"``).
            character_coverage: Share of characters that get their own piece;
                ``None`` means 0.9995 with ``byte_fallback`` and 1.0 without.
            byte_fallback: Spell uncovered characters as UTF-8 bytes instead of ``<unk>``.
            user_defined_symbols: Strings always kept as one piece.
            normalization_rule_name: SentencePiece normaliser; ``"identity"`` keeps
                the text as is (``"nmt_nfkc"`` would fold e.g. full-width forms
                and break exact round trips).
            seed: Seeds the subsampling (``max_sentences``) and SentencePiece's RNG.
            max_sentences: Train on at most this many sentences, drawn with ``seed``.
            num_threads: Trainer threads. Results are deterministic for a given
                input, seed and thread count.
            verbose: Show SentencePiece's training log.
            **options: Passed on to ``SentencePieceTrainer.train`` (e.g.
                ``hard_vocab_limit=False`` for tiny corpora).

        Returns:
            The trained tokenizer; ``training_seconds`` holds how long it took.
        """
        sentences = [text for text in texts if text and text.strip()]
        if not sentences:
            raise ValueError("cannot train a tokenizer on no text: all sentences are empty")
        if max_sentences is not None and len(sentences) > max_sentences:
            chosen = sorted(random.Random(seed).sample(range(len(sentences)), max_sentences))
            sentences = [sentences[i] for i in chosen]
        if character_coverage is None:
            character_coverage = 0.9995 if byte_fallback else 1.0
        spm.set_random_generator_seed(seed)
        trainer_args = dict(
            sentences=sentences,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            user_defined_symbols=list(user_defined_symbols),
            normalization_rule_name=normalization_rule_name,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=START_ID,
            eos_id=END_ID,
            pad_piece="<pad>",
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            input_sentence_size=0,  # we subsample ourselves (max_sentences), deterministically
            num_threads=num_threads,
            minloglevel=0 if verbose else 2,
        )
        trainer_args.update(options)
        start = time.perf_counter()
        model = _train_fitting_vocabulary(trainer_args, len(sentences))
        tokenizer = cls(model)
        tokenizer.training_seconds = time.perf_counter() - start
        tokenizer.num_training_sentences = len(sentences)
        return tokenizer

    @classmethod
    def from_proto(cls, model_proto: bytes, **kwargs) -> "SubwordTokenizer":
        """Builds a tokenizer from a serialized SentencePiece ``ModelProto``."""
        return cls(proto=bytes(model_proto), **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> "SubwordTokenizer":
        """Loads a ``<prefix>.model`` file written by :meth:`save` (the ``.model``
        suffix may be left out)."""
        path = Path(path)
        if not path.exists() and path.with_name(path.name + ".model").exists():
            path = path.with_name(path.name + ".model")
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model file at {path}")
        return cls(proto=path.read_bytes(), **kwargs)

    def save(self, directory: str | os.PathLike, prefix: str = "tokenizer") -> Path:
        """Writes ``<prefix>.model`` (serialized proto) and ``<prefix>.vocab`` (one
        piece per line, line i = id i) into ``directory``, each through a temporary file; returns the model path."""
        from keras_transformer.files import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / f"{prefix}.model"
        atomic_write(model_path, self.model_proto)
        atomic_write(directory / f"{prefix}.vocab", "".join(piece + "\n" for piece in self.id_to_piece).encode("utf-8"))
        return model_path

    # --------------------------------------------------------------- properties
    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece ``ModelProto``."""
        self._check_vocabulary()
        return self.proto

    @property
    def vocab_size(self) -> int:
        """Number of ids (pieces), special ones included."""
        return self.vocabulary_size()

    @property
    def id_to_piece(self) -> list[str]:
        """The pieces; ``id_to_piece[i]`` is the piece of id ``i``."""
        return self.get_vocabulary()

    def piece_to_id(self, piece: str) -> int:
        """Id of ``piece`` (``UNK_ID`` if it is not in the vocabulary)."""
        return self.token_to_id(piece)

    @property
    def fingerprint(self) -> str:
        """A short hash of the SentencePiece model: artefacts store it to check that they travel with the
        vocabulary their model was trained with."""
        return hashlib.sha256(self.model_proto).hexdigest()[:16]

    def __repr__(self) -> str:
        size = self.vocab_size if self.proto is not None else None
        return f"SubwordTokenizer(vocab_size={size}, config_file={self.config_file!r})"

    # ------------------------------------------------------------ in-graph ops
    def tokenize(self, texts, nfc: bool = False) -> tf.RaggedTensor | tf.Tensor:
        """Text to int32 ids, without START/END.

        Args:
            texts: A Python ``str``, a list of ``str``, or a ``tf.string`` tensor
                (works inside ``tf.function`` and ``tf.data``).
            nfc: Unicode-NFC-normalise in the graph first (``tf_text.normalize_utf8``),
                for input that may be decomposed (e.g. Korean typed on macOS).
                Training text from :mod:`keras_transformer.data.corpus` is NFC already.

        Returns:
            For a batch of shape ``[batch]``: a ``tf.RaggedTensor`` ``[batch, None]``.
            For a single string (scalar): a 1-D ``tf.Tensor`` of ids.
        """
        texts = _as_string_tensor(texts)
        if nfc:
            texts = tf_text.normalize_utf8(texts, "NFC")
        self._maybe_initialized_tf()
        return self._sentence_piece.tokenize(texts)

    def detokenize(self, ids, stop_at_end: bool = True) -> tf.Tensor:
        """Ids back to text.

        ``PAD_ID`` and ``START_ID`` are dropped wherever they are; with
        ``stop_at_end`` (default) the first ``END_ID`` and everything after it are
        dropped too (what a decoder emits after END is not part of the text),
        otherwise only the ``END_ID`` tokens themselves.

        Args:
            ids: Int ids: a ``tf.RaggedTensor`` ``[batch, None]``, a dense padded
                tensor / nested list ``[batch, length]``, or one sequence ``[length]``.

        Returns:
            A ``tf.string`` tensor ``[batch]``, or a scalar for a 1-D input.
        """
        if isinstance(ids, tf.RaggedTensor):
            if ids.shape.rank != 2:
                raise ValueError(f"detokenize() expects ragged ids [batch, None], got rank {ids.shape.rank}")
            dense = ids.to_tensor(default_value=PAD_ID)
            scalar = False
        else:
            dense = tf.convert_to_tensor(ids)
            if dense.dtype == tf.string or not dense.dtype.is_integer:
                raise TypeError(f"detokenize() expects integer ids, got {dense.dtype.name}")
            rank = dense.shape.rank
            if rank not in (1, 2):
                raise ValueError(f"detokenize() expects ids of rank 1 or 2, got rank {rank}")
            scalar = rank == 1
            if scalar:
                dense = dense[tf.newaxis]
        dense = tf.cast(dense, tf.int32)
        keep = tf.logical_and(tf.not_equal(dense, PAD_ID), tf.not_equal(dense, START_ID))
        is_end = tf.equal(dense, END_ID)
        if stop_at_end:
            keep = tf.logical_and(keep, tf.equal(tf.cumsum(tf.cast(is_end, tf.int32), axis=1), 0))
        else:
            keep = tf.logical_and(keep, tf.logical_not(is_end))
        self._maybe_initialized_tf()
        text = self._sentence_piece.detokenize(tf.ragged.boolean_mask(dense, keep))
        return text[0] if scalar else text

    # --------------------------------------------------------- plain Python
    def encode(self, text: str) -> list[int]:
        """One string to ids (plain Python, no TF), without START/END."""
        self._maybe_initialized_spm()
        return self._sentence_piece_spm.encode(text, out_type=int)

    def decode(self, ids: Sequence[int], stop_at_end: bool = True) -> str:
        """Ids to a string (plain Python), skipping PAD/START and stopping at END
        (see :meth:`detokenize`)."""
        kept = []
        for token in ids:
            token = int(token)
            if token == END_ID:
                if stop_at_end:
                    break
                continue
            if token not in (PAD_ID, START_ID):
                kept.append(token)
        self._maybe_initialized_spm()
        return self._sentence_piece_spm.decode(kept)


def _train_fitting_vocabulary(trainer_args, num_sentences):
    """Runs SentencePiece's trainer and returns the model bytes. When the requested vocabulary does not fit the data,
    it retries and warns with what it chose: a small corpus has fewer distinct pieces than asked for (then the
    largest size SentencePiece reports as possible), or more distinct characters than the vocabulary has room for,
    as Korean has (then character_coverage 0.98, rarer characters becoming byte pieces, and if that is not enough a
    vocabulary just large enough for the characters)."""
    args = dict(trainer_args)
    sentences = args.pop("sentences")
    requested, coverage = args["vocab_size"], args["character_coverage"]
    for _ in range(6):
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, **args)
        except RuntimeError as error:
            message = str(error)
            too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
            too_few_chars = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
            if too_high:
                args["vocab_size"] = int(too_high.group(2))
            elif too_few_chars and args.get("byte_fallback") and args["character_coverage"] > 0.98:
                args["character_coverage"] = 0.98  # SentencePiece's lowest; rarer characters become byte pieces
            elif too_few_chars:
                args["vocab_size"] = int(too_few_chars.group(2)) + 64  # room for the characters and some pieces
            else:
                raise ValueError(f"SentencePiece training failed: {message}") from None
            continue
        if (args["vocab_size"], args["character_coverage"]) != (requested, coverage):
            warnings.warn(
                f"A vocabulary of {requested} pieces does not fit these {num_sentences:,} sentences: trained "
                f"{args['vocab_size']} pieces with character_coverage={args['character_coverage']} instead. Give "
                "more data, or a vocabulary size that fits, to choose yourself.",
                stacklevel=3,
            )
        return model.getvalue()
    raise ValueError(
        f"SentencePiece training failed: no vocabulary of at most {requested} pieces fits these "
        f"{num_sentences:,} sentences. Give more data."
    )
