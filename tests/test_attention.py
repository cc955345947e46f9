"""Multi-head scaled dot-product attention (paper, sections 3.2.1-3.2.2)."""

import numpy as np
import pytest

from keras import ops

from conftest import numpy_softmax
from keras_transformer.layers import MultiHeadAttention
from keras_transformer.masks import create_look_ahead_mask, create_padding_mask

D_MODEL, HEADS = 16, 4
DEPTH = D_MODEL // HEADS


def np_(x):
    return ops.convert_to_numpy(x)


def inputs(batch=2, length=5, seed=0, d_model=D_MODEL):
    return np.random.default_rng(seed).normal(size=(batch, length, d_model)).astype("float32")


def test_num_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="divide"):
        MultiHeadAttention(d_model=16, num_heads=3)


def test_output_and_weight_shapes_cross_attention():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    q, kv = inputs(2, 3, seed=1), inputs(2, 7, seed=2)
    out, weights = mha(q, kv, return_attention_scores=True)
    assert tuple(out.shape) == (2, 3, D_MODEL)
    assert tuple(weights.shape) == (2, HEADS, 3, 7)


def test_weights_rows_sum_to_one():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    x = inputs(2, 6)
    _, weights = mha(x, x, return_attention_scores=True)
    np.testing.assert_allclose(np_(weights).sum(-1), 1.0, atol=1e-6)


def test_pad_keys_get_exactly_zero_weight():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    ids = np.array([[5, 6, 7, 0, 0], [3, 0, 0, 0, 0]], "int32")
    x = inputs(2, 5)
    _, weights = mha(x, x, attention_mask=create_padding_mask(ids), return_attention_scores=True)
    weights = np_(weights)
    pad = ids == 0  # [batch, key]
    for b in range(2):
        assert np.all(weights[b][:, :, pad[b]] == 0.0)
        np.testing.assert_allclose(weights[b][:, :, ~pad[b]].sum(-1), 1.0, atol=1e-6)


def test_fully_masked_rows_give_zeros_not_nan():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    ids = np.array([[5, 6, 0], [0, 0, 0]], "int32")
    x = inputs(2, 3)
    out, weights = mha(x, x, attention_mask=create_padding_mask(ids), return_attention_scores=True)
    out, weights = np_(out), np_(weights)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights))
    assert np.all(weights[1] == 0.0)
    # All-zero weights -> the attended values are zero -> the output is the output projection's bias.
    bias = np_(mha.output_dense.bias)
    np.testing.assert_allclose(out[1], np.broadcast_to(bias, out[1].shape), atol=1e-6)


@pytest.mark.parametrize("training, dropout", [(False, 0.0), (True, 0.5)])
def test_look_ahead_mask_zero_above_diagonal(training, dropout):
    mha = MultiHeadAttention(D_MODEL, HEADS, dropout=dropout)
    length = 6
    x = inputs(2, length)
    mask = create_look_ahead_mask(length)
    out, weights = mha(x, x, attention_mask=mask, return_attention_scores=True, training=training)
    weights = np_(weights)
    upper = np.triu(np.ones((length, length), bool), k=1)
    assert np.all(weights[..., upper] == 0.0)
    assert np.all(np.isfinite(np_(out)))
    if not training:
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


def test_look_ahead_no_leak_in_training_with_dropout():
    """With dropout 0.5 in training mode, changing x at positions > t must not change the output at <= t."""
    length, t = 6, 2
    mha = MultiHeadAttention(D_MODEL, HEADS, dropout=0.5)
    x = inputs(1, length)
    y = x.copy()
    y[:, t + 1 :] = inputs(1, length - t - 1, seed=9)
    mask = create_look_ahead_mask(length)
    mha.build(x.shape)
    seed_state = mha.dropout_layer.seed_generator.state
    start = np_(seed_state)
    a = np_(mha(x, x, attention_mask=mask, training=True))
    seed_state.assign(start)  # replay the same dropout mask
    b = np_(mha(y, y, attention_mask=mask, training=True))
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    # Sanity check: the later positions did change, and dropout was really active.
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])
    assert not np.allclose(a, np_(mha(x, x, attention_mask=mask, training=False)))


def reference_attention(mha, query, value, mask=None):
    """softmax(Q K^T / sqrt(d_k)) V per head with the layer's own weights, concatenated and projected by W_O."""

    def dense(layer, x):
        return x @ np_(layer.kernel) + np_(layer.bias)

    def split(x):
        b, n, _ = x.shape
        return x.reshape(b, n, HEADS, DEPTH).transpose(0, 2, 1, 3)

    q = split(dense(mha.query_dense, query))
    k = split(dense(mha.key_dense, value))
    v = split(dense(mha.value_dense, value))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(DEPTH)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = numpy_softmax(scores)
    heads = weights @ v  # [b, h, q, depth]
    b, _, n, _ = heads.shape
    concat = heads.transpose(0, 2, 1, 3).reshape(b, n, D_MODEL)
    return dense(mha.output_dense, concat), weights


def test_matches_numpy_reference():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    query, value = inputs(2, 4, seed=3), inputs(2, 6, seed=4)
    out, weights = mha(query, value, return_attention_scores=True)
    ref_out, ref_weights = reference_attention(mha, query.astype(np.float64), value.astype(np.float64))
    np.testing.assert_allclose(np_(weights), ref_weights, atol=1e-5)
    np.testing.assert_allclose(np_(out), ref_out, atol=1e-5)


def test_matches_numpy_reference_with_mask():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    ids = np.array([[4, 5, 6, 0, 0, 0], [1, 2, 3, 4, 5, 0]], "int32")
    query, value = inputs(2, 4, seed=5), inputs(2, 6, seed=6)
    mask = np_(create_padding_mask(ids))
    out = mha(query, value, attention_mask=mask)
    ref_out, _ = reference_attention(mha, query.astype(np.float64), value.astype(np.float64), mask)
    np.testing.assert_allclose(np_(out), ref_out, atol=1e-5)


def test_cache_one_position_at_a_time_equals_full_causal():
    batch, max_len, length = 2, 8, 6
    mha = MultiHeadAttention(D_MODEL, HEADS)
    x = inputs(batch, length, seed=11)
    full = np_(mha(x, x, attention_mask=create_look_ahead_mask(length)))

    cache = (
        ops.zeros((batch, HEADS, max_len, DEPTH), "float32"),
        ops.zeros((batch, HEADS, max_len, DEPTH), "float32"),
    )
    steps = []
    for t in range(length):
        step_input = x[:, t : t + 1]
        filled = (np.arange(max_len) <= t)[None, None, None, :]  # [1, 1, 1, max_len]
        out, weights, cache = mha(
            step_input,
            step_input,
            attention_mask=filled,
            return_attention_scores=True,
            cache=cache,
            cache_update_index=t,
        )
        assert tuple(weights.shape) == (batch, HEADS, 1, max_len)
        assert np.all(np_(weights)[..., t + 1 :] == 0.0)
        steps.append(np_(out))
    assert tuple(cache[0].shape) == (batch, HEADS, max_len, DEPTH)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    # The cache holds exactly the projected keys/values of the whole sequence.
    keys, values = mha.compute_key_value(x)
    np.testing.assert_allclose(np_(cache[0])[:, :, :length], np_(keys), atol=1e-6)
    np.testing.assert_allclose(np_(cache[1])[:, :, :length], np_(values), atol=1e-6)
    assert np.all(np_(cache[0])[:, :, length:] == 0.0)


def test_precomputed_cross_attention_cache_equals_direct():
    mha = MultiHeadAttention(D_MODEL, HEADS)
    query, memory = inputs(2, 3, seed=12), inputs(2, 5, seed=13)
    direct = np_(mha(query, memory))
    cached, cache = mha(query, None, cache=mha.compute_key_value(memory))
    np.testing.assert_allclose(np_(cached), direct, atol=1e-6)
