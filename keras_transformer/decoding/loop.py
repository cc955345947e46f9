"""The one decode loop that every strategy (greedy, sampling, beam search) drives.

The loop owns what all strategies share: a fixed-size token buffer `[rows, max_steps + 1]` (START first, then the
generated tokens) in which step i writes column i + 1 with `tf.where`, so that the loop compiles with XLA and
converts to TFLite builtins; the key/value caches; the per-row `finished` flags (a row stops at its own END and
gets padding after it); and the stop rule (every row finished, or `max_steps` tokens).

With `cache_block=n` the loop runs as consecutive loops over steps [0, n), [n, 2n), ..., each with key/value
buffers just long enough for its steps (zero-padded by n positions between loops), and a later loop does not run
once every row has finished. Early steps then attend over, and beam search reorders, only the positions that can
hold something: the reordering moves the whole cache every step and is bound by memory bandwidth (leaving it out
took a beam-4 batch of 32 with `max_steps` = 63 from 2.22 to 1.37 s on the 2-core AVX2 AMD host). Masked cache
positions add exact zeros to the attention; tests/test_decoding.py checks that greedy and beam search give the
same tokens as with one loop.

With `halvings=n` the loop also stops spending work on finished sources, as the fast engines do (CTranslate2 drops
them from its batch). A batch runs until its longest output ends: on the bundled test set, sorted by length, only
44% of the row-steps of a greedy batch of 32 belong to rows that have not produced END yet (62% for beam 4). So each
block runs as up to n + 1 loops: the first over all sources, and each next one over half as many (rounded up), the
unfinished sources first and finished ones to fill it, entered as soon as the unfinished sources fit. Every loop
starts from, and writes back to, the full-batch buffers (token buffer, flags, strategy carry, caches): the sizes
depend only on the batch size, so XLA still compiles one program per input shape. The beams of a source are kept
or left out together. Tests check that the tokens are those of the loop without halvings.

A strategy only says how the next token of every row is chosen. It is an object with
- `initial_carry()`: its own loop state (e.g. running scores), a nest of tensors, each with one entry per source
  along its first axis;
- `advance(logits, index, finished, carry) -> (next_ids [rows], parents, carry)`: the next token of each row
  and, for strategies that reorder rows (beam search), `parents [rows]`, the row each new row continues; the loop
  then reorders tokens, caches and flags with it. Left-to-right strategies return `parents=None` (no reordering).
  It takes the number of sources from the carry: a loop over fewer sources gives it a smaller one;
- `group_size`: how many consecutive rows decode one source (1; beam search: the beam size).
"""

import tensorflow as tf

from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID


def decode_loop(state, strategy, start_id=START_ID, end_id=END_ID, pad_id=PAD_ID, cache_block=None, halvings=0):
    """Runs `state.step` and `strategy.advance` until every row has produced END or `state.max_steps` tokens;
    `cache_block` (an int, or None for one loop over `max_steps`) grows the key/value buffers in blocks of that
    many steps; `halvings` (an int >= 0) is how many times a block may go on with half as many sources.

    Returns `(tokens, carry)`: the generated ids `[rows, max_steps]` (START removed, END kept, padding after it) and
    the strategy's final carry.
    """
    if isinstance(halvings, bool) or not isinstance(halvings, int) or halvings < 0:
        raise ValueError(f"halvings must be an int >= 0, got {halvings!r}.")
    rows, max_steps, group = state.batch_size, state.max_steps, strategy.group_size
    columns = tf.range(max_steps + 1)
    tokens = tf.fill(tf.stack([rows, max_steps + 1]), tf.constant(pad_id, tf.int32))
    tokens = tf.where(tf.equal(columns, 0)[None, :], tf.constant(start_id, tf.int32), tokens)
    finished = tf.zeros(tf.expand_dims(rows, 0), tf.bool)

    def body_over(state):
        def body(index, tokens, finished, carry, caches):
            logits, caches = state.step(tokens, index, caches)
            next_ids, parents, carry = strategy.advance(tf.cast(logits, tf.float32), index, finished, carry)
            if parents is not None:
                tokens, finished = tf.gather(tokens, parents), tf.gather(finished, parents)
                caches = tf.nest.map_structure(lambda cache: tf.gather(cache, parents), caches)
            next_ids = tf.where(finished, tf.constant(pad_id, tf.int32), tf.cast(next_ids, tf.int32))
            tokens = tf.where(tf.equal(columns, index + 1)[None, :], next_ids[:, None], tokens)
            finished = tf.logical_or(finished, tf.equal(next_ids, end_id))
            return index + 1, tokens, finished, carry, caches

        return body

    def sources_done(finished):
        return tf.reduce_all(tf.reshape(finished, tf.stack([-1, group])), axis=1)

    sizes = [rows // group]  # sources in each loop of a block
    for _ in range(halvings):
        sizes.append((sizes[-1] + 1) // 2)
    ends = block_ends(max_steps, cache_block if state.use_cache else None)
    caches = state.initial_self_caches(ends[0]) if state.use_cache else []
    index, batch = tf.constant(0), (tokens, finished, strategy.initial_carry(), caches)
    for start, end in zip([0] + ends[:-1], ends):
        if start > 0:  # grow the buffers to this block's steps: [rows, heads, start, d_k] -> [rows, heads, end, d_k]
            grow = [[0, 0], [0, 0], [0, end - start], [0, 0]]
            batch = batch[:3] + (tf.nest.map_structure(lambda cache: tf.pad(cache, grow), batch[3]),)
        for level, size in enumerate(sizes):
            fits = sizes[level + 1] if level + 1 < len(sizes) else None  # leave this loop once that many sources remain

            def cond(index, tokens, finished, carry, caches, end=end, fits=fits):
                going = tf.logical_and(index < end, tf.logical_not(tf.reduce_all(finished)))
                if fits is None:
                    return going
                unfinished = tf.reduce_sum(tf.cast(tf.logical_not(sources_done(finished)), tf.int32))
                return tf.logical_and(going, unfinished > fits)

            if level == 0:
                index, *part = tf.while_loop(cond, body_over(state), (index, *batch), maximum_iterations=end - start)
                batch = tuple(part)
                continue
            sources = tf.argsort(tf.cast(sources_done(batch[1]), tf.int32), stable=True)[:size]  # unfinished first
            row_ids = tf.reshape(sources[:, None] * group + tf.range(group)[None, :], [-1])
            part = (index, *_take(batch, row_ids, sources))
            index, *part = tf.while_loop(cond, body_over(state.take(row_ids)), part, maximum_iterations=end - start)
            batch = _put(batch, part, row_ids, sources)
    tokens, _, carry, _ = batch
    return tokens[:, 1:], carry


def _take(batch, row_ids, sources):
    """The loop variables `(tokens, finished, carry, caches)` of the rows `row_ids` (the carry: of `sources`)."""
    tokens, finished, carry, caches = batch
    rows = lambda t: tf.gather(t, row_ids)  # noqa: E731
    return rows(tokens), rows(finished), tf.nest.map_structure(lambda t: tf.gather(t, sources), carry), tf.nest.map_structure(rows, caches)


def _put(batch, part, row_ids, sources):
    """`batch` with the rows `row_ids` (the carry: the entries `sources`) replaced by those of `part`."""
    rows = lambda whole, new: tf.tensor_scatter_nd_update(whole, row_ids[:, None], new)  # noqa: E731
    by_source = lambda whole, new: tf.tensor_scatter_nd_update(whole, sources[:, None], new)  # noqa: E731
    return (
        rows(batch[0], part[0]),
        rows(batch[1], part[1]),
        tf.nest.map_structure(by_source, batch[2], part[2]),
        tf.nest.map_structure(rows, batch[3], part[3]),
    )


def block_ends(max_steps, cache_block):
    """The last step (exclusive) of each loop: `[max_steps]` for one loop, else multiples of `cache_block`, the
    last one `max_steps`."""
    if cache_block is not None and (not isinstance(cache_block, int) or cache_block < 1):
        raise ValueError(f"cache_block must be a positive int or None, got {cache_block!r}.")
    if cache_block is None or not isinstance(max_steps, int) or cache_block >= max_steps:
        return [max_steps]
    return list(range(cache_block, max_steps, cache_block)) + [max_steps]


class TokenByToken:
    """A left-to-right strategy: `choose(logits, step) -> ids` picks each row's next token; the carry is the sum of
    the chosen tokens' log-probabilities per row (padding after END adds nothing). Greedy and sampling are this."""

    group_size = 1

    def __init__(self, state, choose):
        self.rows = state.batch_size
        self.choose = choose

    def initial_carry(self):
        return tf.zeros(tf.expand_dims(self.rows, 0), tf.float32)

    def advance(self, logits, index, finished, scores):
        next_ids = tf.cast(self.choose(logits, index), tf.int32)
        chosen = tf.gather(tf.nn.log_softmax(logits), next_ids, batch_dims=1)
        return next_ids, None, scores + tf.where(finished, 0.0, chosen)
