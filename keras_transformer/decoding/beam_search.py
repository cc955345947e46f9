"""Beam search with the GNMT length penalty, returning the n best hypotheses with their scores."""

import tensorflow as tf

from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID
from keras_transformer.decoding.state import DecoderState


def length_penalty(length, alpha):
    """GNMT (Wu et al., 2016): ((5 + length) / 6) ^ alpha; alpha = 0 ranks by raw log-probability."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def beam_search(model, config, encoder_inputs, max_steps, beam_size=4, alpha=0.6, use_cache=True, placeholder_ids=None):
    """Keeps the `beam_size` most likely prefixes per source. A finished beam (it produced END) only extends with
    padding at no cost. At the end, beams are ranked by log-probability / length_penalty(length, alpha).

    Returns `(ids [batch, beam_size, max_steps], scores [batch, beam_size])`, best first; scores are the
    length-normalized log-probabilities.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    batch = tf.shape(encoder_inputs)[0]
    # Every source is repeated beam_size times: row b * beam_size + k is beam k of source b.
    tiled = tf.repeat(encoder_inputs, beam_size, axis=0)
    state = DecoderState(model, config, tiled, max_steps, use_cache=use_cache, placeholder_ids=placeholder_ids)
    vocab = config.tgt_vocab_size
    columns = tf.range(max_steps + 1)
    tokens = tf.where(tf.equal(columns, 0)[None, :], START_ID, tf.fill(tf.stack([batch * beam_size, max_steps + 1]), PAD_ID))
    # Only beam 0 is alive at the start, so the first step does not pick the same token beam_size times.
    scores = tf.tile(tf.concat([[0.0], tf.fill([beam_size - 1], -1e9)], 0)[None, :], tf.stack([batch, 1]))
    finished = tf.zeros(tf.stack([batch, beam_size]), tf.bool)
    lengths = tf.zeros(tf.stack([batch, beam_size]), tf.int32)
    # For a finished beam: padding costs nothing, anything else is impossible.
    after_end = tf.where(tf.equal(tf.range(vocab), PAD_ID), 0.0, -1e9)

    def body(index, tokens, scores, finished, lengths, caches):
        logits, caches = state.step(tokens, index, caches)
        log_probs = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), tf.stack([batch, beam_size, vocab]))
        log_probs = tf.where(finished[:, :, None], after_end[None, None, :], log_probs)
        candidates = tf.reshape(scores[:, :, None] + log_probs, tf.stack([batch, beam_size * vocab]))
        scores, flat = tf.math.top_k(candidates, k=beam_size)
        beam, token = flat // vocab, flat % vocab
        rows = tf.reshape(beam + tf.range(batch)[:, None] * beam_size, [-1])  # source rows to continue
        tokens = tf.gather(tokens, rows)
        caches = tf.nest.map_structure(lambda c: tf.gather(c, rows), caches)
        finished = tf.gather(tf.reshape(finished, [-1]), rows)
        lengths = tf.gather(tf.reshape(lengths, [-1]), rows)
        token = tf.reshape(token, [-1])
        tokens = tf.where(tf.equal(columns, index + 1)[None, :], token[:, None], tokens)
        lengths = tf.where(finished, lengths, lengths + 1)
        finished = tf.logical_or(finished, tf.equal(token, END_ID))
        shape = tf.stack([batch, beam_size])
        return index + 1, tokens, scores, tf.reshape(finished, shape), tf.reshape(lengths, shape), caches

    def cond(index, tokens, scores, finished, lengths, caches):
        return tf.logical_and(index < max_steps, tf.logical_not(tf.reduce_all(finished)))

    caches = state.initial_self_caches() if use_cache else []
    _, tokens, scores, _, lengths, _ = tf.while_loop(
        cond, body, (tf.constant(0), tokens, scores, finished, lengths, caches), maximum_iterations=max_steps
    )
    normalized = scores / length_penalty(lengths, alpha)
    normalized, order = tf.math.top_k(normalized, k=beam_size)
    tokens = tf.reshape(tokens[:, 1:], tf.stack([batch, beam_size, max_steps]))
    return tf.gather(tokens, order, batch_dims=1), normalized
