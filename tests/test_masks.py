"""Mask helpers. Convention: boolean, True = may attend."""

import numpy as np

from keras import ops

from keras_transformer.masks import create_decoder_mask, create_look_ahead_mask, create_padding_mask


def np_(x):
    return ops.convert_to_numpy(x)


def test_padding_mask_shape_and_values():
    ids = np.array([[7, 3, 0, 0], [1, 0, 5, 0]], "int32")
    mask = np_(create_padding_mask(ids))
    assert mask.shape == (2, 1, 1, 4)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask[:, 0, 0], [[True, True, False, False], [True, False, True, False]])


def test_padding_mask_custom_pad_id():
    ids = np.array([[7, 3, 1, 1]], "int32")
    np.testing.assert_array_equal(np_(create_padding_mask(ids, pad_id=1))[0, 0, 0], [True, True, False, False])


def test_look_ahead_mask_is_lower_triangular():
    for size in (1, 2, 5):
        mask = np_(create_look_ahead_mask(size))
        assert mask.shape == (size, size)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, np.tril(np.ones((size, size), bool)))


def test_decoder_mask_combines_look_ahead_and_padding():
    ids = np.array([[2, 4, 5, 0, 0], [2, 9, 0, 0, 0]], "int32")
    mask = np_(create_decoder_mask(ids))
    assert mask.shape == (2, 1, 5, 5)
    assert mask.dtype == bool
    tril = np.tril(np.ones((5, 5), bool))
    for b in range(2):
        expected = tril & (ids[b] != 0)[None, :]
        np.testing.assert_array_equal(mask[b, 0], expected)
    # Spot checks: row 1 of the second sequence sees keys 0 and 1 only; no row sees a pad key or the future.
    np.testing.assert_array_equal(mask[1, 0, 1], [True, True, False, False, False])
    assert not mask[0, 0, 0, 1]
