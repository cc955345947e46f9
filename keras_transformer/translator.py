"""`Translator`: text in, text out, for a trained model and its two tokenizers."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_transformer.data.special_ids import PAD_ID
from keras_transformer.decoding.decodings import choose_decoding, resolve_decoding, search_function

# Greedy and beam batches of at least this many decoder rows (sentences x beam size) are split into `decode_shards`
# parts decoded at the same time. Sampling is not: its random draws depend on the batch they are drawn for.
MIN_SHARDED_ROWS = 16
SHARDABLE_DECODINGS = ("greedy", "beam")
# A greedy or beam loop over at least this many sources goes on over half of its sources once the others have
# finished, and halves again (`decode_loop`'s `halvings`): same tokens, fewer row-steps. Each halving adds a loop for
# XLA to compile, and smaller loops gain less: 1.10x for greedy batches of 16 in two loops of 8, against 1.34x for
# batches of 32 (main-job model, AMD AVX512-BF16 host). So interactive use and small batches keep one loop. Greedy
# halves four times (batches of 32 in two loops of 16: 1.10x over halving twice, median of 9 interleaved runs; the
# first pass over 500 test sentences, compiles included, 26 -> 29 s); beam search twice (a third halving measured
# 1.00x).
MIN_HALVING_SOURCES = 16
HALVINGS = {"greedy": 4, "beam": 2}
# How many batches `translate` hands to the decoding threads beyond the one whose result it waits for.
BATCHES_AHEAD = 2
# When `translate` has more batches than decoding threads, a batch is split only if each part keeps at least this
# many decoder rows; smaller batches go to one thread whole, and the threads decode whole batches side by side.
# Greedy batches of 32 (main-job model, AMD AVX512-BF16 host, median of 7 interleaved runs): whole 1.10x over two
# halves of 16 rows; beam 4 batches of 32: two halves of 64 rows 1.04x over whole batches of 128.
MIN_PART_ROWS = 32
# What `decode_precision` may name besides "auto" and "model".
DECODE_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "int8")


class Translator:
    """Translates batches of sentences with a trained Transformer.

    Sources go through the model's preprocessor (format placeholders protected as ⦅1⦆, ⦅2⦆, ...; source ids + END),
    the batch is sorted by length and padded to a multiple of 8 (few distinct shapes, so the compiled decoder is
    reused), decoded with the cached XLA-compiled loop (which never emits a placeholder token the source lacks), and
    detokenized back in the original order with the placeholders put back.

    Greedy and beam-search batches of 16 or more decoder rows (sentences x beam size) are split into `decode_shards`
    equal parts, each decoded by the same compiled loop in its own thread, at the same time. A decode step is a
    chain of small ops that XLA runs one after another, so one loop keeps about one core busy; two loops side by
    side use both. On a 2-core CPU this made a batch of 32 about 20% faster per token (bench/bench.py, `decoding`).
    Sources never interact (a beam only competes with the beams of its own source), so the tokens are the same as
    from one loop. `translate` hands the next batches to those threads before it reads a batch's result, so that
    one thread goes on with them while the other finishes the longest output of this one; and when it has more
    batches than threads, a batch whose parts would have fewer than 32 rows (greedy batches of up to 63 sentences)
    goes to one thread whole: larger loops, 1.10x for greedy batches of 32.

    A greedy or beam loop over 16 or more sources stops working on finished ones: once half of them have produced
    END (all their beams, for beam search) it goes on over the other half, and keeps halving: greedy four times,
    beam search twice (`decode_loop`'s `halvings`). A batch sorted by length otherwise spends most of its
    steps on rows that are only padding: 1.34x greedy and 1.5x beam 4 at batch 32 on a 2-core CPU
    (bench/profile_decode.py), same tokens.
    Each halving is one more loop for XLA to compile, so smaller loops (one sentence, a few dozen) do not halve.

    Args:
        model: a `TransformerSeq2SeqLM` (its preprocessor gives the tokenizers) or a `TransformerBackbone`.
        config: optional; if given, it must be the model's own `TransformerConfig`.
        source_tokenizer, target_tokenizer: `SubwordTokenizer`s, for a backbone (a task brings its own).
        max_output_length: longest translation in tokens (default: `config.max_length - 1`).
        jit_compile: compile the decode loop with XLA.
        decode_shards: how many greedy or beam loops to run side by side on a batch of 16 or more rows; `"auto"`
            (default): 2 where this process may use 2 or more CPU cores and there is no GPU, else 1. 1 turns it off.
        decode_precision: `"auto"` (default): decode a mixed-precision model with float32 weights on a CPU, where
            the decode loop measured about 2x faster in float32 than in bfloat16 (its matrices are too small for
            the bfloat16 units to pay for the casts), and in the model's own precision on a GPU; `"float32"`;
            `"model"` (the model's own policy); `"int8"`: a float32 copy whose dense layers compute in int8
            (`TransformerBackbone.int8_copy`), faster at batch 32 on a CPU, tokens close to but not always those of
            float32 (README, Performance). A copy keeps its own weights: after training the model further, call
            `refresh_weights()`.

    Example:
    >>> translator = Translator.load("saved_models/ko-en-small")  # doctest: +SKIP
    >>> translator.translate(["어제 카페 갔었어 거기 사람 많더라"])  # doctest: +SKIP
    >>> translator.translate(["설정"], decoding="beam", beam_size=4)  # doctest: +SKIP
    >>> Translator.load("saved_models/ko-en-small", decode_precision="int8").translate(["설정"])  # doctest: +SKIP
    """

    def __init__(
        self, model, config=None, source_tokenizer=None, target_tokenizer=None, max_output_length=None, jit_compile=True,
        decode_shards="auto", decode_precision="auto",
    ):  # fmt: skip
        from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor
        from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

        if isinstance(model, TransformerSeq2SeqLM):
            self.task, backbone = model, model.backbone
            preprocessor = model.preprocessor
            if source_tokenizer is not None or target_tokenizer is not None:
                raise ValueError("A TransformerSeq2SeqLM brings its own tokenizers: do not pass source/target_tokenizer.")
        else:
            self.task, backbone = None, model
            preprocessor = None
            if source_tokenizer is not None and target_tokenizer is not None:
                preprocessor = TransformerSeq2SeqLMPreprocessor(source_tokenizer, target_tokenizer, max_length=backbone.config.max_length)
        if config is not None and config != backbone.config:
            raise ValueError("config is not the model's own config: leave it out (the model carries its config).")
        self.model = backbone
        self.config = backbone.config
        self.preprocessor = preprocessor
        self.max_output_length = int(max_output_length or self.config.max_length - 1)
        if not 0 < self.max_output_length < self.config.max_length:
            raise ValueError(
                f"max_output_length must be in [1, {self.config.max_length - 1}] for max_length={self.config.max_length}, "
                f"got {max_output_length}."
            )
        self.jit_compile = jit_compile
        self.decode_shards = resolve_decode_shards(decode_shards)
        self.decode_precision = resolve_decode_precision(decode_precision, backbone)
        self._decode_model = _decode_copy(backbone, self.decode_precision)
        self._compiled = {}
        self._pool = None

    @property
    def source_tokenizer(self):
        return self.preprocessor.source_tokenizer if self.preprocessor is not None else None

    @property
    def target_tokenizer(self):
        return self.preprocessor.target_tokenizer if self.preprocessor is not None else None

    def refresh_weights(self):
        """Brings the model's current weights into the decoding copy (a no-op when the model decodes itself; an int8
        copy is quantized again)."""
        if self.decode_precision == "int8":  # new int8 kernels and scales: a new copy, traced again
            self._decode_model, self._compiled = _decode_copy(self.model, "int8"), {}
        elif self._decode_model is not self.model:
            self._decode_model.set_weights(self.model.get_weights())

    @classmethod
    def load(cls, path, **kwargs) -> "Translator":
        """From a run directory written by `keras-transformer train` (its best model), a `.keras` file of a
        `TransformerSeq2SeqLM` (e.g. `averaged.keras`) or a keras-hub preset directory of one."""
        from keras_transformer.run_directory import load_seq2seq_lm

        return cls(load_seq2seq_lm(path), **kwargs)

    def encode_sources(self, texts):
        """Encoder ids for each source (+ END), cut to `max_length` with a warning."""
        self._require_tokenizers()
        return self.preprocessor.encode_sources(texts)

    def _require_tokenizers(self):
        if self.preprocessor is None:
            raise ValueError("This Translator has no tokenizers (built from a backbone alone): use translate_ids.")

    def translate(self, texts, decoding=None, batch_size=64, return_scores=False, **options):
        """Translates a list of sentences (or one string).

        `decoding`: `greedy` (default), `beam` (options `beam_size`, `alpha`; chosen automatically when
        `beam_size` > 1 is given) or `sample` (options `temperature`, `top_k`, `top_p`, `seed`); see
        `keras_transformer.decoding.DECODINGS`. Returns a list of strings, and with `return_scores=True`
        also their scores (log-probability; for beam search divided by the length penalty)."""
        nbest = self.translate_nbest(texts, decoding=decoding, batch_size=batch_size, **options)
        outputs = [hypotheses[0][0] for hypotheses in nbest]
        scores = [hypotheses[0][1] for hypotheses in nbest]
        if isinstance(texts, str):
            outputs, scores = outputs[0], scores[0]
        return (outputs, scores) if return_scores else outputs

    def translate_nbest(self, texts, decoding=None, batch_size=64, **options):
        """Like `translate`, but returns for each source the list of `(translation, score)` hypotheses, best
        first: `beam_size` of them for beam search, one otherwise."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("translate expects a string or a list of strings.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        decoding, options = choose_decoding(decoding, options)
        resolve_decoding(decoding, **options)  # refuses options the decoding does not take, before any work
        self._require_tokenizers()
        encoded, placeholders = self.preprocessor.encode_sources(texts, return_placeholders=True)
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        results = [None] * len(texts)
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        pending = []  # the batches started so far, in order
        try:
            for k, chunk in enumerate(chunks):
                # The next batches are handed to the decoding threads before this one's result is read, so that one
                # thread goes on with them while the other finishes the longest output of this one.
                while len(pending) < min(len(chunks), k + 1 + BATCHES_AHEAD):
                    batch = pad_batch([encoded[i] for i in chunks[len(pending)]], max_length=self.config.max_length)
                    pending.append(self._start_decode(batch, decoding, batches=len(chunks), **options))
                ids, scores = pending[k].result()
                if ids.ndim == 2:  # one hypothesis per source
                    ids, scores = ids[:, None, :], scores[:, None]
                for i, hypotheses, hypothesis_scores in zip(chunk, ids, scores):
                    texts_i = [self.target_tokenizer.decode([int(t) for t in row]) for row in hypotheses]
                    restored = self.preprocessor.restore(texts_i, [placeholders[i]] * len(texts_i))
                    results[i] = [(text, float(score)) for text, score in zip(restored, hypothesis_scores)]
        finally:  # an error or Ctrl-C: batches not yet started are dropped, not decoded in the background
            for decoding_batch in pending:
                decoding_batch.cancel()
        return results

    def translate_ids(self, encoder_ids, decoding="greedy", use_cache=True, **options):
        """`[batch, src_len]` int32 ids (END included, 0-padded) -> `(target ids, scores)` as numpy:
        `[batch, steps]` and `[batch]`, or `[batch, beam_size, steps]` and `[batch, beam_size]` for beam search."""
        return self._start_decode(encoder_ids, decoding, use_cache, **options).result()

    def _start_decode(self, encoder_ids, decoding="greedy", use_cache=True, *, batches=1, **options):
        """Starts `translate_ids` and returns its `_DecodingBatch`. A greedy or beam batch of enough rows is decoded
        by the decoding threads from now on (in the order batches were started): in `decode_shards` parts, or whole
        when the caller starts more `batches` than there are threads and the parts would have fewer than
        `MIN_PART_ROWS` rows. Any other batch is decoded when its result is asked for."""
        spec, options = resolve_decoding(decoding, **options)
        encoder_ids = np.asarray(encoder_ids, np.int32)
        rows = len(encoder_ids) * options.get("beam_size", 1)
        threaded = decoding in SHARDABLE_DECODINGS and self.decode_shards > 1 and rows >= MIN_SHARDED_ROWS and len(encoder_ids) >= self.decode_shards
        whole = batches > self.decode_shards and rows < MIN_PART_ROWS * self.decode_shards
        parts = self.decode_shards if threaded and not whole else 1
        loop_sources = -(-len(encoder_ids) // parts)
        halvings = HALVINGS.get(decoding, 0) if use_cache and loop_sources >= MIN_HALVING_SOURCES else 0
        key = (decoding, use_cache, halvings, tuple(sorted(options.items())))
        if key not in self._compiled:
            search = search_function(spec)
            model, config, steps = self._decode_model, self.config, self.max_output_length
            placeholder_ids = self.preprocessor.placeholder_ids if self.preprocessor is not None else None
            extra = {"halvings": halvings} if halvings else {}
            fn = lambda x: search(model, config, x, steps, use_cache=use_cache, placeholder_ids=placeholder_ids, **extra, **options)  # noqa: E731
            # One trace for all shapes; XLA compiles once per padded shape (lengths are multiples of 8).
            signature = [tf.TensorSpec([None, None], tf.int32)]
            self._compiled[key] = tf.function(fn, input_signature=signature, jit_compile=self.jit_compile)
            self._compiled[key].get_concrete_function()  # trace now, in this thread: Keras' global state is per thread
        compiled = self._compiled[key]
        decode = lambda ids: [t.numpy() for t in compiled(tf.constant(ids))]  # noqa: E731
        if not threaded:
            return _DecodingBatch([_Deferred(lambda: decode(encoder_ids))])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_shards, thread_name_prefix="keras-transformer-decode")
        return _DecodingBatch([self._pool.submit(decode, part) for part in np.array_split(encoder_ids, parts)])


class _DecodingBatch:
    """A batch being decoded, in contiguous parts: each a `Future` of a decoding thread or a `_Deferred`.
    `result()` -> `(ids, scores)` in batch order; `cancel()` drops the parts that have not started."""

    def __init__(self, parts):
        self.parts = parts

    def result(self):
        results = [part.result() for part in self.parts]
        if len(results) == 1:
            return tuple(results[0])
        return np.concatenate([ids for ids, _ in results]), np.concatenate([scores for _, scores in results])

    def cancel(self):
        for part in self.parts:
            part.cancel()


class _Deferred:
    """A part decoded in the caller's thread when its result is asked for (the two methods of a `Future` that
    `_DecodingBatch` uses): batches too small to split, and decodings that are not split (sampling)."""

    def __init__(self, decode):
        self.decode = decode

    def result(self):
        return self.decode()

    def cancel(self):
        return False  # nothing runs before result() is called


def resolve_decode_precision(decode_precision, model):
    """`"auto"` -> `"float32"` where there is no GPU (CPU decoding measured about 2x faster with float32 weights for
    a model trained in mixed_bfloat16), else the model's own policy; `"model"` -> the model's own policy."""
    if decode_precision == "auto":
        return model.dtype_policy.name if tf.config.list_physical_devices("GPU") else "float32"
    if decode_precision == "model":
        return model.dtype_policy.name
    if decode_precision in DECODE_PRECISIONS:
        return decode_precision
    raise ValueError(f"decode_precision must be auto, model, {', '.join(DECODE_PRECISIONS)}, got {decode_precision!r}.")


def _decode_copy(backbone, decode_precision):
    """The backbone the decode loop runs: itself, a copy under another dtype policy, or an int8 copy."""
    return backbone.int8_copy() if decode_precision == "int8" else backbone.with_dtype(decode_precision)


def resolve_decode_shards(decode_shards):
    """`"auto"` -> 2 where this process may run on 2 or more CPU cores and there is no GPU (measured on CPU only),
    else 1; an int >= 1 as it is."""
    if decode_shards == "auto":
        if tf.config.list_physical_devices("GPU"):
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return 2 if cores >= 2 else 1
    if isinstance(decode_shards, bool) or not isinstance(decode_shards, int) or decode_shards < 1:
        raise ValueError(f"decode_shards must be \"auto\" or an integer >= 1, got {decode_shards!r}.")
    return decode_shards


def pad_batch(sequences, multiple=8, max_length=None, pad_id=PAD_ID):
    """Pads lists of ids to one `[batch, length]` int32 array, the length rounded up to a multiple of `multiple`
    (but not beyond `max_length`)."""
    longest = max(len(s) for s in sequences)
    length = -(-longest // multiple) * multiple
    if max_length is not None:
        length = max(longest, min(length, max_length))
    batch = np.full((len(sequences), length), pad_id, dtype=np.int32)
    for row, ids in zip(batch, sequences):
        row[: len(ids)] = ids
    return batch


def load_translator(path, decode_precision="auto"):
    """Any artefact, by what `path` is: a `.tflite` file (run by ai_edge_litert), a CTranslate2 export directory, a
    SavedModel (a version directory or a TF Serving model directory), or a run directory / `.keras` file / preset of
    a `TransformerSeq2SeqLM`. All have `translate(texts)`, and greedy output is the same from each.
    `decode_precision` (see `Translator`) is for the Keras models; an export decodes as it was exported."""
    path = Path(path)
    exported = _export_class(path)
    if exported is None:
        return Translator.load(path, decode_precision=decode_precision)
    if decode_precision != "auto":
        raise ValueError(
            f"decode_precision={decode_precision!r} (--precision) is for run directories, .keras files and presets; "
            f"{path} is an export, which decodes in the precision it was exported in (for int8, export with "
            "--format ctranslate2 --quantize int8 or --format tflite --quantize dynamic)."
        )
    return exported.load(path)


def _export_class(path):
    """The translator class of the exported artefact at `path` (TFLite, CTranslate2, SavedModel), or None."""
    if path.suffix == ".tflite":
        from keras_transformer.export.tflite import TFLiteTranslator

        return TFLiteTranslator
    if path.is_dir():
        from keras_transformer.export.ctranslate2 import is_ctranslate2_export

        if is_ctranslate2_export(path):
            from keras_transformer.export.ctranslate2 import CTranslate2Translator

            return CTranslate2Translator
    if path.is_dir() and not (path / "model.keras").exists():
        from keras_transformer.export.layout import find_versions

        if (path / "saved_model.pb").exists() or find_versions(path):
            from keras_transformer.export.saved_model import SavedModelTranslator

            return SavedModelTranslator
    return None
