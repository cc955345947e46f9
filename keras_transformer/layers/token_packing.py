"""Token packing: in training, the position-wise work of a layer runs on the real tokens of a padded batch only.

A padded batch `[batch, length, d_model]` of sentences of mixed lengths is partly padding (about 40% in the
bench's reference batches, less with length bucketing). Everything in a Transformer layer except the attention
scores is position-wise: the Q/K/V/output projections, the feed-forward network, dropout, the residual adds and
the LayerNorms. Packing gathers the real positions into `[tokens, d_model]` rows, runs that work on them, and
scatters back only where attention needs the `[batch, length]` layout. The real positions get the same values as
without packing (padding never reaches them: pad keys have exactly zero attention weight); the padding positions
of a packed layer's output are zeros. FasterTransformer calls this "remove padding".

It applies when a layer is called with `training=True` and a padding mask, outside XLA: the number of real tokens
changes from batch to batch, a dynamic shape that XLA would compile again for every batch (`jit_compile=True`,
and the element-wise clusters of `TrainingConfig.xla_fusion`). Inference, export and the decode loop never pack.
`set_enabled(False)` turns it off, e.g. to measure what it gains (`bench/levers.py`).
"""

import contextlib
import os

import tensorflow as tf

_enabled = True


def set_enabled(enabled: bool) -> bool:
    """Turns packing on or off for layers traced from now on; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


@contextlib.contextmanager
def disabled():
    """Layers traced inside this block do not pack."""
    previous = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


def _in_xla():
    # tf.function(jit_compile=True) traces inside an XLA control-flow context; auto-clustering is a flag.
    from tensorflow.python.ops import control_flow_util

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return True
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_auto_jit" in flags and "tf_xla_auto_jit=0" not in flags and "tf_xla_auto_jit=-1" not in flags:
        return True
    return bool(tf.config.optimizer.get_jit())


class TokenPacking:
    """The real positions of a padded batch, and the moves between the two layouts.

    `pack(x)`: `[batch, length, ...]` -> `[tokens, ...]`, the real positions in row-major order;
    `unpack(x)`: back to `[batch, length, ...]`, zeros at the padding.
    """

    def __init__(self, keep):
        """`keep`: boolean `[batch, length]`, True at real tokens."""
        self.indices = tf.where(keep)  # [tokens, 2]
        self.shape = tf.shape(keep, out_type=tf.int64)

    @classmethod
    def for_call(cls, padding_mask, training):
        """A packing for a layer call, or None where packing does not apply (not training, no mask, XLA, or
        switched off). `padding_mask`: boolean `[batch, 1, 1, length]` (`masks.create_padding_mask`)."""
        if not training or padding_mask is None or not _enabled or _in_xla():
            return None
        shape = tf.shape(padding_mask)
        return cls(tf.reshape(tf.cast(padding_mask, tf.bool), [shape[0], shape[-1]]))

    def pack(self, x):
        return tf.gather_nd(x, self.indices)

    def unpack(self, x):
        return tf.scatter_nd(self.indices, x, tf.concat([self.shape, tf.shape(x, out_type=tf.int64)[1:]], 0))


def pack(x, packing):
    """`x` packed with `packing`, or `x` itself when `packing` is None."""
    return x if packing is None else packing.pack(x)


def unpack(x, packing):
    """`x` unpacked with `packing`, or `x` itself when `packing` is None."""
    return x if packing is None else packing.unpack(x)
