"""The one decode loop that every left-to-right strategy (greedy, sampling) drives.

The loop keeps a fixed-size token buffer `[batch, max_steps + 1]` (START first, then the generated tokens)
and writes column i + 1 with `tf.where` at step i, so that the loop compiles with XLA and converts to TFLite
builtins. Every sequence stops at its own END (later positions are padding); the loop ends when all have.
A strategy only says how the next token is chosen from the logits: `choose(logits, step) -> ids`.
"""

import tensorflow as tf

from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID


def decode_loop(state, choose, start_id=START_ID, end_id=END_ID, pad_id=PAD_ID):
    """Runs `state.step` until every sequence has produced END or `state.max_steps` tokens.

    Returns `(tokens, scores)`: the generated ids `[batch, max_steps]` (START removed, END kept, padding after
    it) and the sum of the chosen tokens' log-probabilities `[batch]`.
    """
    batch, max_steps = state.batch_size, state.max_steps
    columns = tf.range(max_steps + 1)
    tokens = tf.fill(tf.stack([batch, max_steps + 1]), tf.constant(pad_id, tf.int32))
    tokens = tf.where(tf.equal(columns, 0)[None, :], tf.constant(start_id, tf.int32), tokens)
    finished = tf.zeros(tf.expand_dims(batch, 0), tf.bool)
    scores = tf.zeros(tf.expand_dims(batch, 0), tf.float32)

    def body(index, tokens, finished, scores, caches):
        logits, caches = state.step(tokens, index, caches)
        logits = tf.cast(logits, tf.float32)
        next_ids = tf.cast(choose(logits, index), tf.int32)
        log_probs = tf.nn.log_softmax(logits)
        chosen = tf.gather(log_probs, next_ids, batch_dims=1)
        scores += tf.where(finished, 0.0, chosen)
        next_ids = tf.where(finished, tf.constant(pad_id, tf.int32), next_ids)
        write = tf.equal(columns, index + 1)[None, :]
        tokens = tf.where(write, next_ids[:, None], tokens)
        finished = tf.logical_or(finished, tf.equal(next_ids, end_id))
        return index + 1, tokens, finished, scores, caches

    def cond(index, tokens, finished, scores, caches):
        return tf.logical_and(index < max_steps, tf.logical_not(tf.reduce_all(finished)))

    caches = state.initial_self_caches() if state.use_cache else []
    _, tokens, _, scores, _ = tf.while_loop(
        cond, body, (tf.constant(0), tokens, finished, scores, caches), maximum_iterations=max_steps
    )
    return tokens[:, 1:], scores
