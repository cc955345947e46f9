"""What one decoding step needs: the encoder output, the key/value cache, and the step function itself.

Cache layout (one documented layout, used by every strategy and by the exported models):
- cross-attention: per decoder layer, `(key, value)` of the encoder output, each `[batch, heads, src_len, d_k]`,
  computed once per source;
- self-attention: per decoder layer, `(key, value)` buffers of fixed size `[batch, heads, cache_len, d_k]`,
  zeros at first; step i writes position i. Fixed sizes let XLA and TFLite compile the decode loop. `cache_len` is
  `max_steps`, or less while the loop runs in blocks (`decode_loop(..., cache_block=...)`): then the buffers grow
  block by block, so that early steps neither attend over nor reorder positions that are still empty.

Two ways to get the next-token logits at position i, with identical results:
- `cached_step`: feeds only token i and attends over the cache (O(1) new work per layer and step);
- `full_step`: re-runs the whole decoder over the token buffer and reads position i (what the TensorFlow
  tutorial does; kept as the reference and for benchmarks).
"""

import copy

import tensorflow as tf
from keras import ops

from keras_transformer.data.placeholders import allowed_token_mask, mask_logits



class DecoderState:
    """Encoder output and caches for a batch of sources, and the step functions over them."""

    def __init__(self, model, config, encoder_inputs, max_steps, use_cache=True, placeholder_ids=None, repeat=1):
        """`repeat`: decoder rows per source (beam search's beam size): each source is encoded once and its encoder
        output, cross-attention cache and placeholder mask are repeated, so that rows r * repeat .. r * repeat +
        repeat - 1 decode source r."""
        self.model = model  # a TransformerBackbone
        self.config = config
        self.max_steps = max_steps
        self.use_cache = use_cache
        rows = (lambda t: t) if repeat == 1 else (lambda t: None if t is None else tf.repeat(t, repeat, axis=0))
        encoder_output, encoder_padding_mask = model.encode(encoder_inputs, training=False)
        self.encoder_output, self.encoder_padding_mask = rows(encoder_output), rows(encoder_padding_mask)
        self.batch_size = tf.shape(self.encoder_output)[0]
        self.decoder_layers = model.decoder_layers
        # Placeholder tokens a source does not have may not be emitted (computed once per batch, from the ids).
        self.allowed = None if placeholder_ids is None else rows(allowed_placeholders(encoder_inputs, placeholder_ids, config.tgt_vocab_size))
        if use_cache:
            self.cross_caches = [
                tuple(rows(t) for t in layer.cross_attention.compute_key_value(encoder_output)) for layer in self.decoder_layers
            ]

    def take(self, rows):
        """This state for the rows `rows` of the batch (int32 `[n]`): what a decode loop over those rows needs."""
        part = copy.copy(self)
        take = lambda t: None if t is None else tf.gather(t, rows)  # noqa: E731
        part.encoder_output, part.encoder_padding_mask, part.allowed = take(self.encoder_output), take(self.encoder_padding_mask), take(self.allowed)
        part.batch_size = tf.shape(rows)[0]
        if self.use_cache:
            part.cross_caches = [tuple(take(t) for t in cache) for cache in self.cross_caches]
        return part

    def initial_self_caches(self, length=None):
        """Zero `(key, value)` buffers `[batch, heads, length, d_k]` (`length` defaults to `max_steps`), one pair
        per decoder layer."""
        c = self.config
        depth = c.d_model // c.num_heads
        dtype = self.encoder_output.dtype
        length = self.max_steps if length is None else length
        zeros = tf.zeros(tf.stack([self.batch_size, c.num_heads, length, depth]), dtype=dtype)
        return [(zeros, zeros) for _ in range(c.num_layers)]

    def cached_step(self, tokens, index, self_caches):
        """Logits `[batch, vocab]` for position `index`, feeding only `tokens[:, index]`."""
        token = tf.expand_dims(tokens[:, index], 1)  # [batch, 1]
        x = self.model.target_embedding(token)
        x = self.model.decoder_positional_encoding(x, start_index=index)
        # The query at `index` may see cache positions 0..index.
        cache_len = self_caches[0][0].shape[2] or tf.shape(self_caches[0][0])[2]
        visible = ops.less_equal(ops.arange(cache_len), index)
        self_mask = ops.reshape(visible, (1, 1, 1, cache_len))
        new_caches = []
        for layer, cross_cache, self_cache in zip(self.decoder_layers, self.cross_caches, self_caches):
            x, self_cache = layer(
                x,
                encoder_padding_mask=self.encoder_padding_mask,
                self_attention_mask=self_mask,
                self_attention_cache=self_cache,
                self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache,
                training=False,
            )
            new_caches.append(self_cache)
        logits = self.model.project_to_vocabulary(x)
        return logits[:, 0, :], new_caches

    def full_step(self, tokens, index, self_caches=None):
        """Logits `[batch, vocab]` for position `index`, re-running the decoder over the whole buffer."""
        logits = self.model.decode(tokens, self.encoder_output, self.encoder_padding_mask, training=False)
        return tf.gather(logits, index, axis=1), self_caches

    def step(self, tokens, index, self_caches):
        logits, caches = self.cached_step(tokens, index, self_caches) if self.use_cache else self.full_step(tokens, index, self_caches)
        if self.allowed is not None:
            logits = mask_logits(logits, self.allowed)
        return logits, caches


def allowed_placeholders(encoder_inputs, placeholder_ids, vocab_size):
    """`[batch, vocab]` boolean: False at the target placeholder tokens whose source token is not in that row of
    `encoder_inputs`, and at raw placeholder pieces. `placeholder_ids` = `(source ids, target ids, raw ids)` of
    ⦅1⦆, ⦅2⦆, ... (see `TransformerSeq2SeqLMPreprocessor.placeholder_ids`); a source with n placeholders holds
    ⦅1⦆ .. ⦅n⦆, so counting the source tokens present gives n."""
    source_ids = tf.constant(placeholder_ids[0], tf.int32)
    present = tf.reduce_any(tf.equal(tf.cast(encoder_inputs, tf.int32)[:, :, None], source_ids[None, None, :]), axis=1)
    counts = tf.reduce_sum(tf.cast(present, tf.int32), axis=1)
    allowed = allowed_token_mask(list(placeholder_ids[1]), counts, vocab_size)
    raw = list(placeholder_ids[2]) if len(placeholder_ids) > 2 else []
    if raw:
        never = tf.reduce_any(tf.one_hot(raw, vocab_size, on_value=True, off_value=False, dtype=tf.bool), axis=0)
        allowed = tf.logical_and(allowed, tf.logical_not(never)[None, :])
    return allowed
