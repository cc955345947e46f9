"""Attention masks.

THE CONVENTION, used everywhere in this package: a mask is boolean and `True` means "this query may attend
to this key"; `False` keys get exactly zero attention weight. (The TensorFlow tutorial uses the opposite,
1 = masked; keras-hub uses this one.)

Masks broadcast against attention scores of shape `[batch, num_heads, query_len, key_len]`:
- `create_padding_mask(ids)` -> `[batch, 1, 1, key_len]`: hide pad keys.
- `create_look_ahead_mask(size)` -> `[size, size]`: position i sees positions <= i only.
- `create_decoder_mask(ids)` -> `[batch, 1, tgt_len, tgt_len]`: both at once, for decoder self-attention.

The model builds all of them from the token ids itself; users never pass masks by hand.
"""

from keras import ops


def create_padding_mask(ids, pad_id=0):
    """`[batch, seq_len]` ids -> `[batch, 1, 1, seq_len]` boolean, False at pad positions."""
    keep = ops.not_equal(ids, pad_id)
    return ops.expand_dims(ops.expand_dims(keep, 1), 1)


def create_look_ahead_mask(size):
    """`[size, size]` boolean lower-triangular mask: row i is True for columns 0..i.

    Built from `arange` (not `ones`), so it also works when `size` is a dynamic tensor inside a graph.
    """
    positions = ops.arange(size)
    return ops.greater_equal(ops.expand_dims(positions, 1), ops.expand_dims(positions, 0))


def create_decoder_mask(ids, pad_id=0):
    """Look-ahead AND target padding: `[batch, 1, tgt_len, tgt_len]`."""
    look_ahead = create_look_ahead_mask(ops.shape(ids)[1])
    look_ahead = ops.expand_dims(ops.expand_dims(look_ahead, 0), 0)
    return ops.logical_and(look_ahead, create_padding_mask(ids, pad_id))
