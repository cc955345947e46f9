"""Token packing (keras_transformer/layers/token_packing.py): in training, the layers compute on the real tokens of a
padded batch only. The loss, the gradients and the real positions' logits must equal those of the padded
computation; inference, XLA and the decode loop must never pack."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from conftest import SRC_VOCAB, TGT_VOCAB, tiny
from keras_transformer import build_transformer
from keras_transformer.layers import token_packing
from keras_transformer.layers.token_packing import TokenPacking
from keras_transformer.losses import MaskedSparseCategoricalCrossentropy


def padded_batch(seed=0):
    """Three pairs of different lengths, one source and one target of a single token."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(1, SRC_VOCAB, (3, 9)).astype("int32")
    dec = rng.integers(1, TGT_VOCAB, (3, 8)).astype("int32")
    labels = rng.integers(1, TGT_VOCAB, (3, 8)).astype("int32")
    for row, (src_len, tgt_len) in enumerate([(9, 5), (4, 8), (1, 1)]):
        enc[row, src_len:] = 0
        dec[row, tgt_len:] = 0
        labels[row, tgt_len:] = 0
    return {"encoder_inputs": enc, "decoder_inputs": dec}, labels


def loss_logits_grads(model, inputs, labels, packing):
    loss_fn = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    previous = token_packing.set_enabled(packing)
    try:
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss = loss_fn(labels, logits)
    finally:
        token_packing.set_enabled(previous)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), keras.ops.convert_to_numpy(logits), [keras.ops.convert_to_numpy(g) for g in grads]


def test_pack_and_unpack_move_exactly_the_real_positions():
    keep = np.array([[True, True, False, False], [True, True, True, True], [False, False, False, False]])
    x = np.arange(3 * 4 * 2, dtype="float32").reshape(3, 4, 2) + 1
    packing = TokenPacking(tf.constant(keep))
    packed = packing.pack(tf.constant(x))
    np.testing.assert_array_equal(packed.numpy(), x[keep])
    np.testing.assert_array_equal(packing.unpack(packed).numpy(), np.where(keep[..., None], x, 0))


@pytest.mark.parametrize("norm_first", [False, True])
def test_training_step_is_the_same_with_and_without_packing(norm_first):
    """Dropout 0 so that both passes are deterministic: same loss, same gradient for every weight, same logits at
    every real target position."""
    model = build_transformer(tiny(dropout_rate=0.0, norm_first=norm_first))
    inputs, labels = padded_batch()
    loss, logits, grads = loss_logits_grads(model, inputs, labels, packing=True)
    loss_ref, logits_ref, grads_ref = loss_logits_grads(model, inputs, labels, packing=False)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    real = labels != 0
    np.testing.assert_allclose(logits[real], logits_ref[real], rtol=1e-5, atol=1e-5)
    assert len(grads) == len(grads_ref) == len(model.trainable_variables)
    for variable, g, g_ref in zip(model.trainable_variables, grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6, err_msg=variable.path)


def test_mixed_bfloat16_training_step_packs_and_agrees():
    """gather/scatter of bfloat16 activations run on this CPU, and the loss stays that of the padded pass."""
    model = build_transformer(tiny(dropout_rate=0.0), dtype="mixed_bfloat16")
    inputs, labels = padded_batch(1)
    loss, _, grads = loss_logits_grads(model, inputs, labels, packing=True)
    loss_ref, _, _ = loss_logits_grads(model, inputs, labels, packing=False)
    assert loss == pytest.approx(loss_ref, rel=2e-2)
    assert all(np.isfinite(g).all() for g in grads)


def test_attention_on_packed_queries_equals_the_padded_layout():
    """MultiHeadAttention given packed rows (`[tokens, d_model]` and their TokenPacking) returns the packed rows of
    what it returns for the padded batch; with `value` left out, the keys come from the packed queries too."""
    from keras_transformer.layers import MultiHeadAttention
    from keras_transformer.masks import create_padding_mask

    ids = np.array([[5, 6, 7, 0], [8, 0, 0, 0]], "int32")
    mask = create_padding_mask(ids)
    x = tf.random.stateless_normal([2, 4, 8], seed=[1, 2])
    mha = MultiHeadAttention(d_model=8, num_heads=2)
    padded = mha(x, x, attention_mask=mask)
    packing = TokenPacking(tf.constant(ids != 0))
    packed = mha(packing.pack(x), attention_mask=mask, query_packing=packing)
    assert tuple(packed.shape) == (4, 8)
    np.testing.assert_allclose(packed.numpy(), padded.numpy()[ids != 0], rtol=1e-5, atol=1e-6)


def graph_op_types(function, *args):
    return {op.type for op in function.get_concrete_function(*args).graph.get_operations()}


def test_packing_only_in_training_and_never_under_xla():
    model = build_transformer(tiny())
    inputs, _ = padded_batch()
    spec = {k: tf.TensorSpec([None, None], tf.int32) for k in inputs}

    def forward(training):
        return lambda x: model(x, training=training)

    assert {"GatherNd", "ScatterNd"} <= graph_op_types(tf.function(forward(True)), spec)
    assert "ScatterNd" not in graph_op_types(tf.function(forward(False)), spec)
    assert "ScatterNd" not in graph_op_types(tf.function(forward(True), jit_compile=True), spec)
    with token_packing.disabled():
        assert "ScatterNd" not in graph_op_types(tf.function(forward(True)), spec)


def test_xla_auto_clustering_turns_packing_off(monkeypatch):
    mask = tf.ones([2, 1, 1, 3], tf.bool)
    assert TokenPacking.for_call(mask, training=True) is not None
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit")
    assert TokenPacking.for_call(mask, training=True) is None


def test_jit_compiled_fit_still_trains():
    """`jit_compile=True` (TrainingConfig.jit_compile) must not meet the dynamic shapes of packing."""
    model = build_transformer(tiny())
    model.compile(optimizer="adam", loss=MaskedSparseCategoricalCrossentropy(), jit_compile=True)
    inputs, labels = padded_batch()
    first = model.train_on_batch(inputs, labels)
    for _ in range(5):
        last = model.train_on_batch(inputs, labels)
    assert np.isfinite(last) and last < first
