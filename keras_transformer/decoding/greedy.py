"""Greedy decoding: the most likely token at every step."""

import tensorflow as tf

from keras_transformer.decoding.loop import decode_loop
from keras_transformer.decoding.state import DecoderState


def greedy_search(model, config, encoder_inputs, max_steps, use_cache=True):
    """`encoder_inputs` `[batch, src_len]` -> `(ids [batch, max_steps], scores [batch])`.

    Example:
    >>> ids, scores = greedy_search(model, config, encoder_ids, max_steps=32)  # doctest: +SKIP
    """
    state = DecoderState(model, config, encoder_inputs, max_steps, use_cache=use_cache)
    return decode_loop(state, lambda logits, step: tf.argmax(logits, axis=-1, output_type=tf.int32))
