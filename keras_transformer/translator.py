"""`Translator`: text in, text out, for a trained model and its two tokenizers."""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_transformer.config import TransformerConfig
from keras_transformer.data.special_ids import END_ID, PAD_ID
from keras_transformer.decoding import beam_search, greedy_search, sample

STRATEGIES = ("greedy", "beam", "sample")

# Greedy batches of at least this many sentences are split into `decode_shards` parts decoded at the same time.
MIN_SHARDED_BATCH = 16


class Translator:
    """Translates batches of sentences with a trained Transformer.

    Sources are tokenized, END is appended, the batch is sorted by length and padded to a multiple of 8 (few
    distinct shapes, so the compiled decoder is reused), decoded with the cached XLA-compiled loop, and
    detokenized back in the original order.

    Greedy batches of 16 or more sentences are split into `decode_shards` equal parts, each decoded by the same
    compiled loop in its own thread, at the same time. A decode step is a chain of small ops that XLA runs one after
    another, so one loop keeps about one core busy; two loops side by side use both. On a 2-core CPU this made a
    batch of 32 about 20% faster per token (bench/bench.py, `decoding`). Rows never interact, so the tokens are the
    same as from one loop.

    Args:
        model: a model from `build_transformer` (trained).
        config: its `TransformerConfig`.
        source_tokenizer, target_tokenizer: `keras_transformer.data.SubwordTokenizer`s it was trained with.
        max_output_length: longest translation in tokens (default: `config.max_length - 1`).
        jit_compile: compile the decode loop with XLA.
        decode_shards: how many greedy loops to run side by side on a batch of 16 or more; `"auto"` (default): 2
            where this process may use 2 or more CPU cores and there is no GPU, else 1. 1 turns it off.

    Example:
    >>> translator = Translator.load("saved_models/ko-en-small")  # doctest: +SKIP
    >>> translator.translate(["어제 카페 갔었어 거기 사람 많더라"])  # doctest: +SKIP
    """

    def __init__(
        self, model, config, source_tokenizer, target_tokenizer, max_output_length=None, jit_compile=True, decode_shards="auto"
    ):
        self.model = model
        self.config = config
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_output_length = int(max_output_length or config.max_length - 1)
        if not 0 < self.max_output_length < config.max_length:
            raise ValueError(
                f"max_output_length must be in [1, {config.max_length - 1}] for max_length={config.max_length}, "
                f"got {max_output_length}."
            )
        self.jit_compile = jit_compile
        self.decode_shards = resolve_decode_shards(decode_shards)
        self._compiled = {}
        self._pool = None

    @classmethod
    def load(cls, path, **kwargs) -> "Translator":
        """From a run directory written by `keras_transformer.training.train`: it holds `config.json`,
        `model.keras`, `source.model` and `target.model`. `path` may also be another `.keras` file inside a run
        directory (e.g. `averaged.keras`), used with that directory's config and tokenizers."""
        from keras_transformer import load_model
        from keras_transformer.data.tokenizer import SubwordTokenizer

        path = Path(path)
        model_file = path if path.suffix == ".keras" else path / "model.keras"
        run_dir = model_file.parent
        needed = [run_dir / "config.json", model_file, run_dir / "source.model", run_dir / "target.model"]
        missing = [p.name for p in needed if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a complete run directory: missing {', '.join(missing)}. Point to the directory "
                "that `keras-transformer train` wrote (saved_models/<run-name>)."
            )
        config = TransformerConfig.from_dict(json.loads((run_dir / "config.json").read_text())["model"])
        return cls(
            load_model(model_file),
            config,
            SubwordTokenizer.load(run_dir / "source.model"),
            SubwordTokenizer.load(run_dir / "target.model"),
            **kwargs,
        )

    def encode_sources(self, texts):
        """Token ids for each source (+ END), truncated to `max_length` with a warning."""
        limit = self.config.max_length - 1
        encoded = [list(self.source_tokenizer.encode(text)) for text in texts]
        truncated = sum(len(ids) > limit for ids in encoded)
        encoded = [ids[:limit] + [END_ID] for ids in encoded]
        if truncated:
            warnings.warn(f"{truncated} source sentence(s) were longer than max_length={self.config.max_length} tokens and were truncated.")
        return encoded

    def translate(self, texts, strategy=None, batch_size=64, return_scores=False, **options):
        """Translates a list of sentences (or one string).

        `strategy`: `greedy` (default), `beam` (options `beam_size`, `alpha`; chosen automatically when
        `beam_size` > 1 is given) or `sample` (options `temperature`, `top_k`, `top_p`, `seed`).
        Returns a list of strings, and with `return_scores=True` also their scores (log-probability; for beam
        search divided by the length penalty)."""
        nbest = self.translate_nbest(texts, strategy=strategy, batch_size=batch_size, **options)
        outputs = [hypotheses[0][0] for hypotheses in nbest]
        scores = [hypotheses[0][1] for hypotheses in nbest]
        if isinstance(texts, str):
            outputs, scores = outputs[0], scores[0]
        return (outputs, scores) if return_scores else outputs

    def translate_nbest(self, texts, strategy=None, batch_size=64, **options):
        """Like `translate`, but returns for each source the list of `(translation, score)` hypotheses, best
        first: `beam_size` of them for beam search, one otherwise."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("translate expects a string or a list of strings.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if strategy is None:
            strategy = "beam" if options.get("beam_size", 1) > 1 else "greedy"
            if strategy == "greedy":
                options.pop("beam_size", None)
        encoded = self.encode_sources(texts)
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        results = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = pad_batch([encoded[i] for i in chunk], max_length=self.config.max_length)
            ids, scores = self.translate_ids(batch, strategy, **options)
            if ids.ndim == 2:  # one hypothesis per source
                ids, scores = ids[:, None, :], scores[:, None]
            for i, hypotheses, hypothesis_scores in zip(chunk, ids, scores):
                results[i] = [
                    (self.target_tokenizer.decode([int(t) for t in row]), float(score))
                    for row, score in zip(hypotheses, hypothesis_scores)
                ]
        return results

    def translate_ids(self, encoder_ids, strategy="greedy", use_cache=True, **options):
        """`[batch, src_len]` int32 ids (END included, 0-padded) -> `(target ids, scores)` as numpy:
        `[batch, steps]` and `[batch]`, or `[batch, beam_size, steps]` and `[batch, beam_size]` for beam search."""
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
        key = (strategy, use_cache, tuple(sorted(options.items())))
        if key not in self._compiled:
            if strategy == "greedy":
                if options:
                    raise ValueError(f"greedy decoding takes no options, got {sorted(options)}.")
                fn = lambda x: greedy_search(self.model, self.config, x, self.max_output_length, use_cache=use_cache)  # noqa: E731
            elif strategy == "beam":
                fn = lambda x: beam_search(self.model, self.config, x, self.max_output_length, use_cache=use_cache, **options)  # noqa: E731
            else:
                fn = lambda x: sample(self.model, self.config, x, self.max_output_length, use_cache=use_cache, **options)  # noqa: E731
            # One trace for all shapes; XLA compiles once per padded shape (lengths are multiples of 8).
            signature = [tf.TensorSpec([None, None], tf.int32)]
            self._compiled[key] = tf.function(fn, input_signature=signature, jit_compile=self.jit_compile)
            self._compiled[key].get_concrete_function()  # trace now, in this thread: Keras' global state is per thread
        decode = self._compiled[key]
        encoder_ids = np.asarray(encoder_ids, np.int32)
        if strategy == "greedy" and self.decode_shards > 1 and len(encoder_ids) >= MIN_SHARDED_BATCH:
            return self._decode_in_shards(decode, encoder_ids)
        ids, scores = decode(tf.constant(encoder_ids))
        return ids.numpy(), scores.numpy()

    def _decode_in_shards(self, decode, encoder_ids):
        """`decode` on `decode_shards` contiguous slices of the batch at the same time, results in batch order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_shards, thread_name_prefix="keras-transformer-decode")
        parts = np.array_split(encoder_ids, self.decode_shards)
        futures = [self._pool.submit(lambda part=part: [t.numpy() for t in decode(tf.constant(part))]) for part in parts]
        results = [future.result() for future in futures]
        return np.concatenate([ids for ids, _ in results]), np.concatenate([scores for _, scores in results])


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


def load_translator(path):
    """Any of the three artefacts, by what `path` is: a `.tflite` file (run by ai_edge_litert), a SavedModel
    (a version directory or a TF Serving model directory), or a run directory with `model.keras`. All three have
    `translate(texts)`, and greedy output is the same from each."""
    path = Path(path)
    if path.suffix == ".tflite":
        from keras_transformer.export.tflite import TFLiteTranslator

        return TFLiteTranslator.load(path)
    if path.is_dir() and not (path / "model.keras").exists():
        from keras_transformer.export.layout import find_versions

        if (path / "saved_model.pb").exists() or find_versions(path):
            from keras_transformer.export.saved_model import SavedModelTranslator

            return SavedModelTranslator.load(path)
    return Translator.load(path)
