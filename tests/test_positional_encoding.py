"""Sinusoidal positional encoding (paper, section 3.5)."""

import numpy as np
import pytest

import keras

from keras_transformer.layers import PositionalEncoding, positional_encoding


def reference_table(positions, d_model):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), written out per entry."""
    table = np.zeros((len(positions), d_model), dtype=np.float64)
    for row, pos in enumerate(positions):
        for i in range(d_model // 2):
            angle = pos / 10000.0 ** (2 * i / d_model)
            table[row, 2 * i] = np.sin(angle)
            table[row, 2 * i + 1] = np.cos(angle)
    return table


def test_table_matches_paper_formula_d512():
    positions = [0, 1, 7, 100, 255]
    table = positional_encoding(256, 512)
    assert table.shape == (256, 512)
    assert table.dtype == np.float32
    np.testing.assert_allclose(table[positions], reference_table(positions, 512), atol=1e-6, rtol=0)


def test_table_position_zero_is_sin0_cos0():
    table = positional_encoding(4, 8)
    np.testing.assert_array_equal(table[0, 0::2], 0.0)
    np.testing.assert_array_equal(table[0, 1::2], 1.0)


def test_layer_adds_table():
    d_model, length = 16, 10
    layer = PositionalEncoding(max_length=20, d_model=d_model)
    x = np.random.default_rng(0).normal(size=(3, length, d_model)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, x + positional_encoding(20, d_model)[None, :length], atol=1e-6, rtol=0)


def test_layer_start_index_offsets_positions():
    d_model = 8
    layer = PositionalEncoding(max_length=20, d_model=d_model)
    x = np.zeros((1, 1, d_model), "float32")
    out = keras.ops.convert_to_numpy(layer(x, start_index=5))
    np.testing.assert_allclose(out[0, 0], positional_encoding(20, d_model)[5], atol=1e-6, rtol=0)


def test_layer_accepts_exactly_max_length():
    layer = PositionalEncoding(max_length=12, d_model=8)
    assert tuple(layer(np.zeros((1, 12, 8), "float32")).shape) == (1, 12, 8)


def test_input_longer_than_max_length_raises():
    layer = PositionalEncoding(max_length=12, d_model=8)
    x = keras.ops.convert_to_tensor(np.zeros((2, 13, 8), "float32"))
    with pytest.raises(ValueError, match="max_length"):
        layer(x)
