"""Random sampling with temperature, top-k and top-p (nucleus) filtering."""

import tensorflow as tf

from keras_transformer.decoding.loop import TokenByToken, decode_loop
from keras_transformer.decoding.state import DecoderState


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Divides by `temperature`, then keeps the `top_k` most likely tokens (0 = all) and the smallest set whose
    probability reaches `top_p` (1.0 = all); the others get -inf."""
    logits = logits / temperature
    lowest = tf.constant(-float("inf"), logits.dtype)
    if top_k:
        kth = tf.math.top_k(logits, k=top_k).values[:, -1:]
        logits = tf.where(logits < kth, lowest, logits)
    if top_p < 1.0:
        sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
        cumulative = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
        # The smallest logit still inside the nucleus (the first token is always kept).
        kept = tf.where(cumulative < top_p, sorted_logits, tf.reduce_max(sorted_logits, -1, keepdims=True))
        threshold = tf.reduce_min(kept, axis=-1, keepdims=True)
        logits = tf.where(logits < threshold, lowest, logits)
    return logits


def sample(model, config, encoder_inputs, max_steps, temperature=1.0, top_k=0, top_p=1.0, seed=0, use_cache=True, placeholder_ids=None):
    """Samples each next token from the filtered distribution; the same `seed` gives the same output."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use greedy decoding for temperature 0).")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    state = DecoderState(model, config, encoder_inputs, max_steps, use_cache=use_cache, placeholder_ids=placeholder_ids)

    def choose(logits, step):
        filtered = filter_logits(logits, temperature, top_k, top_p)
        return tf.random.stateless_categorical(filtered, 1, seed=tf.stack([seed, step]), dtype=tf.int32)[:, 0]

    return decode_loop(state, TokenByToken(state, choose))
