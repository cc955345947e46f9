"""tf.data input pipeline for training the encoder-decoder Transformer.

:func:`make_dataset` turns parallel sentences into batches of::

    ({"encoder_inputs": int32[batch, length], "decoder_inputs": int32[batch, length]},
     labels int32[batch, length])

padded with ``PAD_ID`` (0). With teacher forcing, for a target ``t1 .. tn``::

    encoder_inputs = s1 .. sm  END         (source ids + END)
    decoder_inputs = START t1 .. tn        (target shifted right)
    labels         = t1 .. tn  END         (what the decoder must predict)

so ``decoder_inputs[:, 1:] == labels[:, :-1]`` on real positions. The source
also gets END: the encoder then sees an explicit end of sentence (and never an
empty sequence), as in the original Transformer / tensor2tensor setup. These
rules are written once, in :mod:`keras_transformer.preprocessor`, which this
pipeline, decoding and the exports all use. Format placeholders are protected as
pairs (:func:`keras_transformer.data.placeholders.protect_pair`) when both
tokenizers hold the placeholder tokens, as the preprocessor protects sources.

Length filter: a pair is dropped when ``len(source) + 1`` or ``len(target) + 1``
exceeds ``max_length``. Tokenization runs once, eagerly, with the tokenizers'
in-graph TF ops (the same ops as in an exported model), which gives exact
statistics (:class:`PipelineStats`) and saves re-tokenizing every epoch.

Bucketing: pairs are grouped by ``max(len(encoder_inputs), len(labels))`` and
every batch is padded to its bucket boundary (both sides to the same length),
so the model only ever sees ``len(bucket_boundaries)`` distinct sequence
lengths -- few retraces under ``jit_compile``/XLA. With ``tokens_per_batch``
each bucket's batch size is ``max(1, tokens_per_batch // boundary)``, so all
batches carry about the same number of tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_transformer.data.placeholders import holds_placeholder_tokens, protect_pairs
from keras_transformer.data.tokenizer import PAD_ID, SubwordTokenizer
from keras_transformer.preprocessor import pack_encoder, pack_target

__all__ = [
    "PipelineStats",
    "default_bucket_boundaries",
    "make_dataset",
    "padding_share",
]

# Candidate boundaries; default_bucket_boundaries() keeps those below max_length.
# Fine at the short end because UI strings are short (median 7 tokens incl. END
# on the bundled ko-en data); ~1.5x steps above. On the bundled train set at
# max_length=64 these 9 buckets give ~20% padding, 4 fewer (starting at 8) ~28%,
# everything padded to 64 ~86%.
_BASE_BOUNDARIES = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_TOKENIZE_CHUNK = 65536


def default_bucket_boundaries(max_length: int) -> list[int]:
    """``[4, 6, 8, 12, 16, 24, 32, 48, 64, 96, ...]`` below ``max_length``, then ``max_length``."""
    return [b for b in _BASE_BOUNDARIES if b < max_length] + [max_length]


def _normalise_boundaries(bucket_boundaries: Sequence[int] | None, max_length: int) -> list[int]:
    if bucket_boundaries is None:
        return default_bucket_boundaries(max_length)
    boundaries = sorted({int(b) for b in bucket_boundaries})
    if boundaries and boundaries[0] < 1:
        raise ValueError(f"bucket boundaries must be positive, got {list(bucket_boundaries)}")
    return [b for b in boundaries if b < max_length] + [max_length]


def _tokenize(tokenizer: SubwordTokenizer, texts: Sequence[str]) -> tf.RaggedTensor:
    chunks = [
        tokenizer.tokenize(list(texts[i : i + _TOKENIZE_CHUNK]))
        for i in range(0, len(texts), _TOKENIZE_CHUNK)
    ]
    return chunks[0] if len(chunks) == 1 else tf.concat(chunks, axis=0)


@dataclasses.dataclass
class PipelineStats:
    """What :func:`make_dataset` did to the data (one epoch, before repetition).

    Lengths count the added START/END token. ``padding_share`` is the fraction of
    padded positions among all positions of ``encoder_inputs`` and ``labels``
    (``decoder_inputs`` pads exactly like ``labels``); it is exact for the chosen
    buckets, independent of shuffling.
    """

    num_pairs: int
    num_filtered: int
    num_examples: int
    num_batches: int
    max_length: int
    bucket_boundaries: tuple[int, ...]
    bucket_batch_sizes: tuple[int, ...]
    bucket_counts: tuple[int, ...]
    padding_share: float
    source_padding_share: float
    target_padding_share: float
    mean_source_length: float
    mean_target_length: float
    num_filtered_source: int = 0
    num_filtered_target: int = 0
    drop_remainder: bool = False

    @property
    def filtered_share(self) -> float:
        return self.num_filtered / self.num_pairs if self.num_pairs else 0.0

    def to_dict(self) -> dict:
        """Plain-Python values (lists for tuples), e.g. for a JSON report."""
        values = dataclasses.asdict(self)
        values.update({k: list(v) for k, v in values.items() if isinstance(v, tuple)})
        values["filtered_share"] = self.filtered_share
        return values

    def summary(self) -> str:
        lines = [
            f"pairs: {self.num_pairs:,}; kept {self.num_examples:,}; filtered "
            f"{self.num_filtered:,} ({self.filtered_share:.2%}) longer than max_length="
            f"{self.max_length} (source too long: {self.num_filtered_source:,}, target too "
            f"long: {self.num_filtered_target:,})",
            f"mean length (with END/START): source {self.mean_source_length:.1f}, "
            f"target {self.mean_target_length:.1f}",
            f"batches per epoch: {self.num_batches:,}; padding share {self.padding_share:.1%} "
            f"(source {self.source_padding_share:.1%}, target {self.target_padding_share:.1%})",
            "buckets (padded length: batch size x batches, examples):",
        ]
        for boundary, size, count in zip(
            self.bucket_boundaries, self.bucket_batch_sizes, self.bucket_counts
        ):
            lines.append(
                f"  {boundary:>4}: {size:>4} x "
                f"{(count // size if self.drop_remainder else math.ceil(count / size)):>6,}, {count:>8,}"
            )
        return "\n".join(lines)


def make_dataset(
    sources: Sequence[str],
    targets: Sequence[str],
    source_tokenizer: SubwordTokenizer,
    target_tokenizer: SubwordTokenizer,
    *,
    max_length: int = 64,
    tokens_per_batch: int | None = None,
    batch_size: int = 64,
    bucket_boundaries: Sequence[int] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tuple[tf.data.Dataset, PipelineStats]:
    """Builds the bucketed, padded, shuffled training dataset.

    Args:
        sources: Source sentences (e.g. ``corpus.sources``).
        targets: Target sentences, aligned with ``sources``.
        source_tokenizer: Tokenizer for the sources.
        target_tokenizer: Tokenizer for the targets.
        max_length: Longest allowed sequence, START/END included; longer pairs are
            dropped and counted. Always the last bucket boundary.
        tokens_per_batch: If set, each bucket's batch size is
            ``max(1, tokens_per_batch // boundary)``; ``batch_size`` is then ignored.
        batch_size: Batch size of every bucket when ``tokens_per_batch`` is None.
        bucket_boundaries: Padded lengths of the buckets; values >= ``max_length``
            are dropped and ``max_length`` is appended. ``None``:
            :func:`default_bucket_boundaries`. ``[max_length]`` gives a single
            bucket (everything padded to ``max_length``).
        shuffle: Shuffle the examples (buffer = the whole data set), reshuffled
            each epoch; deterministic for a given ``seed``.
        seed: Shuffle seed.
        repeat: Repeat forever (buckets then carry over between epochs).
        drop_remainder: Drop each bucket's last, smaller batch (only at the end
            of a finite data set), so the batch dimension is fixed per bucket too.

    Returns:
        ``(dataset, stats)``: batches of ``({"encoder_inputs", "decoder_inputs"}, labels)``,
        all int32 ``[batch, boundary]``, and a :class:`PipelineStats`.
    """
    if len(sources) != len(targets):
        raise ValueError(
            f"sources and targets must have the same length, got {len(sources)} and {len(targets)}"
        )
    if not len(sources):
        raise ValueError("no sentence pairs given")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one token + START/END), got {max_length}")
    if tokens_per_batch is None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    boundaries = _normalise_boundaries(bucket_boundaries, max_length)
    if tokens_per_batch is not None:
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        batch_sizes = [max(1, tokens_per_batch // b) for b in boundaries]
    else:
        batch_sizes = [batch_size] * len(boundaries)

    if holds_placeholder_tokens(source_tokenizer) and holds_placeholder_tokens(target_tokenizer):
        sources, targets = protect_pairs(sources, targets)  # as the preprocessor does at translation time
    source_ids = _tokenize(source_tokenizer, sources)
    target_ids = _tokenize(target_tokenizer, targets)
    source_lengths = source_ids.row_lengths().numpy() + 1  # + END
    target_lengths = target_ids.row_lengths().numpy() + 1  # START + target / target + END
    source_ok = source_lengths <= max_length
    target_ok = target_lengths <= max_length
    keep = source_ok & target_ok
    kept = np.flatnonzero(keep)
    if not len(kept):
        raise ValueError(
            f"all {len(sources)} pairs are longer than max_length={max_length} tokens; "
            "raise max_length"
        )

    # Exact statistics for the chosen buckets.
    source_lengths, target_lengths = source_lengths[kept], target_lengths[kept]
    lengths = np.maximum(source_lengths, target_lengths)
    bucket_of = np.searchsorted(np.asarray(boundaries), lengths, side="left")
    padded = np.asarray(boundaries)[bucket_of]
    counts = np.bincount(bucket_of, minlength=len(boundaries))
    batches = sum(
        (count // size if drop_remainder else math.ceil(count / size))
        for count, size in zip(counts, batch_sizes)
    )
    total_padded = float(padded.sum())
    stats = PipelineStats(
        num_pairs=len(sources),
        num_filtered=int(len(sources) - len(kept)),
        num_examples=int(len(kept)),
        num_batches=int(batches),
        max_length=max_length,
        bucket_boundaries=tuple(boundaries),
        bucket_batch_sizes=tuple(batch_sizes),
        bucket_counts=tuple(int(c) for c in counts),
        padding_share=1.0 - float(source_lengths.sum() + target_lengths.sum()) / (2 * total_padded),
        source_padding_share=1.0 - float(source_lengths.sum()) / total_padded,
        target_padding_share=1.0 - float(target_lengths.sum()) / total_padded,
        mean_source_length=float(source_lengths.mean()),
        mean_target_length=float(target_lengths.mean()),
        num_filtered_source=int((~source_ok).sum()),
        num_filtered_target=int((~target_ok).sum()),
        drop_remainder=drop_remainder,
    )

    if len(kept) < len(sources):
        source_ids = tf.gather(source_ids, kept)
        target_ids = tf.gather(target_ids, kept)
    encoder_inputs = pack_encoder(source_ids, max_length)
    decoder_inputs, labels = pack_target(target_ids)
    dataset = tf.data.Dataset.from_tensor_slices((encoder_inputs, decoder_inputs, labels))
    if shuffle:
        dataset = dataset.shuffle(len(kept), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def to_example(encoder, decoder, label):
        return {"encoder_inputs": encoder, "decoder_inputs": decoder}, label

    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.bucket_by_sequence_length(
        element_length_func=lambda inputs, labels: tf.maximum(
            tf.shape(inputs["encoder_inputs"])[0], tf.shape(labels)[0]
        ),
        # bucket i holds lengths < tf_boundary[i] and is padded to tf_boundary[i] - 1.
        bucket_boundaries=[b + 1 for b in boundaries],
        bucket_batch_sizes=batch_sizes + [batch_sizes[-1]],  # + the (empty) overflow bucket
        padded_shapes=({"encoder_inputs": [None], "decoder_inputs": [None]}, [None]),
        padding_values=PAD_ID,
        pad_to_bucket_boundary=True,
        drop_remainder=drop_remainder,
    )
    return dataset.prefetch(tf.data.AUTOTUNE), stats


def padding_share(dataset: tf.data.Dataset, num_batches: int | None = None) -> float:
    """Measured fraction of ``PAD_ID`` positions in ``encoder_inputs`` and ``labels``.

    Iterates ``dataset`` (all of it, or the first ``num_batches`` batches; give a
    number for a repeating dataset).
    """
    if num_batches is not None:
        dataset = dataset.take(num_batches)
    pads = total = 0
    for inputs, labels in dataset.as_numpy_iterator():
        encoder = inputs["encoder_inputs"]
        pads += int((encoder == PAD_ID).sum()) + int((labels == PAD_ID).sum())
        total += encoder.size + labels.size
    if not total:
        raise ValueError("the dataset yielded no batches")
    return pads / total
