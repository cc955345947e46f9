"""Beam search with the GNMT length penalty, returning the n best hypotheses with their scores.

It is a strategy of the shared decode loop (`loop.py`): the loop's rows are the beams (row b * beam_size + k is beam
k of source b), and each step returns, besides the next tokens, the rows the new beams continue, which the loop
uses to reorder its token buffer, caches and finished flags.
"""

import tensorflow as tf

from keras_transformer.data.special_ids import PAD_ID
from keras_transformer.decoding.loop import decode_loop
from keras_transformer.decoding.state import DecoderState

# Beam search grows its key/value buffers in blocks of this many steps (see `decode_loop`), or of twice as many when
# the loop drops finished sources (`halvings` > 0): each block is then halvings + 1 loops for XLA to compile, and a
# beam-4 evaluation of the 2,000 test sentences at batch 64 (main-job model, AVX512-BF16 AMD host) took 120 s with
# 16-step blocks and 71 s with 32-step blocks, compiles included (13.9 and 14.1 s once compiled).
CACHE_BLOCK = 16


# `top_k_in_blocks` reads the vocabulary in blocks of this many entries.
TOP_K_BLOCK = 32


def top_k_in_blocks(values, k, block=TOP_K_BLOCK):
    """`tf.math.top_k(values, k)` over the last axis: the same values and indices, ties to the lower index. The k
    largest entries lie in the k blocks (of `block` consecutive entries) with the largest maxima, ties to the lower
    block: each block left out has k chosen blocks ranked above it, and each of those holds an entry ranked above
    any of its own. So one max over every entry, a top_k over the block maxima and one over the k * block entries
    of the chosen blocks (kept in index order, so that ties still go to the lower index) give the answer. XLA's CPU
    top_k reads a whole vocabulary much more slowly than a max does: for k = 4 over [16, 4, 8,000] and [32, 4, 8,000]
    candidates this took 1.06 -> 0.51 ms and 1.95 -> 0.68 ms (AMD AVX512-BF16 2-core host), and beam 4 over 500 test
    sentences at batch 32 ran 1.02x faster (median of 9 interleaved runs, same translations)."""
    size = values.shape[-1]
    blocks = None if size is None else -(-size // block)
    if blocks is None or blocks <= k:
        return tf.math.top_k(values, k=k)
    lead = tf.shape(values)[:-1]
    if blocks * block > size:  # fill the last block with -inf entries: every real entry ranks above them
        padding = tf.fill(tf.concat([lead, [blocks * block - size]], 0), tf.constant(-float("inf"), values.dtype))
        values = tf.concat([values, padding], -1)
    grouped = tf.reshape(values, tf.concat([lead, [blocks, block]], 0))
    _, chosen = tf.math.top_k(tf.reduce_max(grouped, axis=-1), k=k)
    chosen = tf.sort(chosen, axis=-1)  # index order
    batch_dims = len(values.shape) - 1
    candidates = tf.gather(grouped, chosen, batch_dims=batch_dims)  # [..., k, block]
    top, position = tf.math.top_k(tf.reshape(candidates, tf.concat([lead, [k * block]], 0)), k=k)
    return top, tf.gather(chosen, position // block, batch_dims=batch_dims) * block + position % block


def length_penalty(length, alpha):
    """GNMT (Wu et al., 2016): ((5 + length) / 6) ^ alpha; alpha = 0 ranks by raw log-probability."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


class BeamStrategy:
    """Keeps the `beam_size` most likely prefixes per source. A finished beam (it produced END) only extends with
    padding at no cost. The carry is `(scores, lengths)`, both `[batch, beam_size]`: the log-probability of each
    beam and its length (END included)."""

    def __init__(self, batch, beam_size, vocab_size):
        self.batch, self.beam_size, self.vocab_size = batch, beam_size, vocab_size
        self.group_size = beam_size  # a source's beams are dropped from the loop together (see `decode_loop`)
        # For a finished beam: padding costs nothing, anything else is impossible.
        self.after_end = tf.where(tf.equal(tf.range(vocab_size), PAD_ID), 0.0, -1e9)

    def initial_carry(self):
        # Only beam 0 is alive at the start, so the first step does not pick the same token beam_size times.
        first = tf.concat([[0.0], tf.fill([self.beam_size - 1], -1e9)], 0)
        scores = tf.tile(first[None, :], tf.stack([self.batch, 1]))
        return scores, tf.zeros(tf.stack([self.batch, self.beam_size]), tf.int32)

    def advance(self, logits, index, finished, carry):
        scores, lengths = carry
        batch, beam_size, vocab = tf.shape(scores)[0], self.beam_size, self.vocab_size  # the sources in this loop
        log_probs = tf.reshape(tf.nn.log_softmax(logits), tf.stack([batch, beam_size, vocab]))
        log_probs = tf.where(tf.reshape(finished, tf.stack([batch, beam_size, 1])), self.after_end[None, None, :], log_probs)
        # The beam_size best of the beam_size * vocab candidates, in two stages: the beam_size best tokens of each
        # beam (`top_k_in_blocks`), then the best of those beam_size * beam_size. Same result and tie order as one
        # top_k over all candidates (ties go to the lower beam, then the lower token); XLA's CPU top_k over rows of
        # vocab entries is cheaper than over one row of beam_size * vocab (with encoding once: 1.71 -> 1.65 s for a
        # beam-4 batch of 32, AVX2 AMD host).
        per_beam, tokens = top_k_in_blocks(scores[:, :, None] + log_probs, k=beam_size)  # [batch, beam, beam_size]
        scores, flat = tf.math.top_k(tf.reshape(per_beam, tf.stack([batch, beam_size * beam_size])), k=beam_size)
        beam = flat // beam_size
        token = tf.gather(tf.reshape(tokens, tf.stack([batch, beam_size * beam_size])), flat, batch_dims=1)
        parents = tf.reshape(beam + tf.range(batch)[:, None] * beam_size, [-1])  # the row each new beam continues
        was_finished = tf.reshape(tf.gather(tf.reshape(finished, [-1]), parents), tf.shape(beam))
        lengths = tf.gather(lengths, beam, batch_dims=1)
        lengths = tf.where(was_finished, lengths, lengths + 1)
        return tf.reshape(token, [-1]), parents, (scores, lengths)


def beam_search(model, config, encoder_inputs, max_steps, beam_size=4, alpha=0.6, use_cache=True, placeholder_ids=None, halvings=0):
    """The `beam_size` most likely translations of each source, ranked by log-probability / length_penalty(length,
    alpha). `halvings`: how many times the loop may go on with half as many sources once the others have finished
    (see `decode_loop`; same tokens).

    Returns `(ids [batch, beam_size, max_steps], scores [batch, beam_size])`, best first; scores are the
    length-normalized log-probabilities.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    batch = tf.shape(encoder_inputs)[0]
    state = DecoderState(model, config, encoder_inputs, max_steps, use_cache=use_cache, placeholder_ids=placeholder_ids, repeat=beam_size)
    strategy = BeamStrategy(batch, beam_size, config.tgt_vocab_size)
    cache_block = 2 * CACHE_BLOCK if halvings and CACHE_BLOCK else CACHE_BLOCK
    tokens, (scores, lengths) = decode_loop(state, strategy, cache_block=cache_block, halvings=halvings)
    normalized, order = tf.math.top_k(scores / length_penalty(lengths, alpha), k=beam_size)
    tokens = tf.reshape(tokens, tf.stack([batch, beam_size, max_steps]))
    return tf.gather(tokens, order, batch_dims=1), normalized
