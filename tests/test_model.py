"""The assembled encoder-decoder: masking end to end, parameter counts, saving, mixed precision, errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras

from conftest import SRC_VOCAB, TGT_VOCAB, random_ids, run_model, tiny
from keras_transformer import PRESETS, TransformerConfig, build_transformer
from keras_transformer.layers import TokenEmbedding
from keras_transformer.model import attention_weights

# --------------------------------------------------------------------------------------------------------------
# The look-ahead mask: no information flows from later target positions to earlier ones.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_no_leak_through_look_ahead_mask(norm_first):
    config = tiny(dropout_rate=0.3, norm_first=norm_first)
    model = build_transformer(config)
    rng = np.random.default_rng(0)
    batch, src_len, tgt_len = 3, 7, 8
    enc = random_ids(rng, batch, src_len, SRC_VOCAB)
    dec = random_ids(rng, batch, tgt_len, TGT_VOCAB)
    base = run_model(model, enc, dec)
    assert np.all(np.isfinite(base))
    for t in (0, 2, 5, 6):
        changed = dec.copy()
        changed[:, t + 1 :] = random_ids(rng, batch, tgt_len - t - 1, TGT_VOCAB)
        changed[0, -1] = 0  # a pad in the future must not leak either
        assert not np.array_equal(changed[:, t + 1 :], dec[:, t + 1 :])
        logits = run_model(model, enc, changed)
        np.testing.assert_allclose(logits[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0, err_msg=f"t={t}")
        # ... while the later positions do react to the change (the test is not vacuous).
        assert not np.allclose(logits[:, t + 1 :], base[:, t + 1 :], atol=1e-4)


def test_decoder_self_attention_zero_above_diagonal_every_layer():
    config = tiny(dropout_rate=0.3, num_layers=3)
    model = build_transformer(config)
    rng = np.random.default_rng(1)
    enc = random_ids(rng, 2, 6, SRC_VOCAB)
    dec = random_ids(rng, 2, 7, TGT_VOCAB)
    weights = attention_weights(model, config, enc, dec)
    assert len(weights["decoder_self_attention"]) == config.num_layers
    upper = np.triu(np.ones((7, 7), bool), k=1)
    for layer, w in enumerate(weights["decoder_self_attention"]):
        assert w.shape == (2, config.num_heads, 7, 7)
        assert np.all(w[..., upper] == 0.0), f"decoder layer {layer} attends to the future"
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    # attention_weights runs the same forward pass as the model.
    np.testing.assert_allclose(weights["logits"], run_model(model, enc, dec), atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Padding: extra pad tokens never change the result for real tokens.
# --------------------------------------------------------------------------------------------------------------


def padded_batch():
    """Source and target with per-row padding, plus versions with extra pad columns appended."""
    enc = np.array([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0], [11, 12, 13, 0, 0]], "int32")
    dec = np.array([[2, 5, 6, 7], [2, 8, 0, 0], [2, 9, 10, 0]], "int32")
    enc_more = np.concatenate([enc, np.zeros((3, 4), "int32")], axis=1)
    dec_more = np.concatenate([dec, np.zeros((3, 3), "int32")], axis=1)
    return enc, dec, enc_more, dec_more


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_source_padding_does_not_change_logits(norm_first):
    config = tiny(num_layers=3, norm_first=norm_first, dropout_rate=0.1)
    model = build_transformer(config)
    enc, dec, enc_more, dec_more = padded_batch()
    real = dec != 0
    base = run_model(model, enc, dec)

    more_src = run_model(model, enc_more, dec)
    np.testing.assert_allclose(more_src[real], base[real], atol=1e-5, rtol=0)

    more_tgt = run_model(model, enc, dec_more)
    np.testing.assert_allclose(more_tgt[:, : dec.shape[1]][real], base[real], atol=1e-5, rtol=0)

    both = run_model(model, enc_more, dec_more)
    np.testing.assert_allclose(both[:, : dec.shape[1]][real], base[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_pad_keys_get_zero_weight_in_every_layer(norm_first):
    config = tiny(num_layers=3, norm_first=norm_first)
    model = build_transformer(config)
    _, _, enc, dec = padded_batch()
    weights = attention_weights(model, config, enc, dec)
    src_pad = enc == 0  # [batch, src_len]
    tgt_pad = dec == 0
    checks = (("encoder_self_attention", src_pad), ("cross_attention", src_pad), ("decoder_self_attention", tgt_pad))
    for name, pad in checks:
        assert len(weights[name]) == 3
        for layer, w in enumerate(weights[name]):
            for b in range(enc.shape[0]):
                assert np.all(w[b][..., pad[b]] == 0.0), f"{name} layer {layer} row {b} attends to padding"
    for layer, w in enumerate(weights["cross_attention"]):
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Parameter counts.
# --------------------------------------------------------------------------------------------------------------


def encoder_layer_params(d, dff):
    attention = 4 * (d * d + d)
    ffn = d * dff + dff + dff * d + d
    return attention + ffn + 2 * 2 * d


def decoder_layer_params(d, dff):
    return encoder_layer_params(d, dff) + 4 * (d * d + d) + 2 * d


def test_base_model_parameter_counts():
    vocab, d, dff, n = 37000, 512, 2048, 6
    layers = n * (encoder_layer_params(d, dff) + decoder_layer_params(d, dff))

    shared = build_transformer(
        TransformerConfig.from_preset("base", src_vocab_size=vocab, tgt_vocab_size=vocab, share_embeddings=True)
    )
    assert shared.count_params() == 63_082_496  # paper, Table 3: ~65M
    assert shared.count_params() == layers + vocab * d
    del shared
    keras.backend.clear_session()

    separate = build_transformer(TransformerConfig.from_preset("base", src_vocab_size=vocab, tgt_vocab_size=vocab))
    # Separate source and target embeddings plus an output projection with a bias.
    assert separate.count_params() == layers + 3 * vocab * d + vocab == 101_007_496


def test_tiny_parameter_counts_unshared_vs_shared(tiny_config):
    d, dff, n = tiny_config.d_model, tiny_config.dff, tiny_config.num_layers
    assert (d, dff, n) == (32, 64, 2)
    layers = n * (encoder_layer_params(d, dff) + decoder_layer_params(d, dff))
    model = build_transformer(tiny_config)
    assert model.count_params() == layers + SRC_VOCAB * d + TGT_VOCAB * d + d * TGT_VOCAB + TGT_VOCAB
    shared = build_transformer(tiny(src_vocab_size=TGT_VOCAB, share_embeddings=True))
    assert shared.count_params() == layers + TGT_VOCAB * d
    pre_ln = build_transformer(tiny(norm_first=True))
    assert pre_ln.count_params() == model.count_params() + 2 * 2 * d  # final encoder and decoder LayerNorms


# --------------------------------------------------------------------------------------------------------------
# Saving: `.keras` round trip, loaded in a fresh Python process.
# --------------------------------------------------------------------------------------------------------------

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import keras_transformer, keras
    directory = sys.argv[1]
    inputs = np.load(os.path.join(directory, "inputs.npz"))
    names = json.loads(sys.argv[2])
    report = {}

    def run(model, name, suffix):
        out = model({"encoder_inputs": inputs["enc"], "decoder_inputs": inputs["dec"]}, training=False)
        np.save(os.path.join(directory, name + suffix + ".npy"), keras.ops.convert_to_numpy(out))
        return {"class": type(model).__name__, "params": int(model.count_params())}

    # The package's own loader, for every model.
    for name in names:
        report[name] = run(keras_transformer.load_model(os.path.join(directory, name + ".keras")), name, "_loaded")
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Saves three models (post-LN, shared embeddings, pre-LN) and loads them in ONE fresh Python process."""
    directory = tmp_path_factory.mktemp("keras_round_trip")
    configs = {
        "post_ln": tiny(dropout_rate=0.1),
        "shared": tiny(src_vocab_size=TGT_VOCAB, share_embeddings=True),
        "pre_ln": tiny(norm_first=True),
    }
    rng = np.random.default_rng(3)
    enc = random_ids(rng, 2, 6, TGT_VOCAB)
    enc[1, 4:] = 0
    dec = random_ids(rng, 2, 5, TGT_VOCAB)
    dec[1, 3:] = 0
    np.savez(directory / "inputs.npz", enc=enc, dec=dec)
    expected = {}
    for name, config in configs.items():
        model = build_transformer(config)
        expected[name] = (run_model(model, enc, dec), model.count_params())
        model.save(directory / f"{name}.keras")

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(directory), json.dumps(list(configs))],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return directory, expected, report


def test_keras_round_trip_in_fresh_process(round_trip):
    """`keras_transformer.load_model` (the package's documented loader) in a new process gives identical logits."""
    directory, expected, report = round_trip
    for name, (logits, params) in expected.items():
        loaded = np.load(directory / f"{name}_loaded.npy")
        np.testing.assert_allclose(loaded, logits, atol=1e-6, rtol=0, err_msg=name)
        assert report[name]["params"] == params, name
        assert report[name]["class"] == "TransformerBackbone", name


def test_importing_the_package_stays_light():
    """`import keras_transformer` must not import TensorFlow (the CLI's --help relies on it); models are loaded
    with `keras_transformer.load_model`, which registers the package's layers first (tested above)."""
    code = "import sys, keras_transformer; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# --------------------------------------------------------------------------------------------------------------
# Mixed precision.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_gives_finite_float32_logits(policy):
    model = build_transformer(tiny(), dtype=policy)
    if True:  # the global policy is never touched
        enc = np.array([[5, 6, 7, 0], [0, 0, 0, 0], [3, 4, 0, 0]], "int32")  # row 1: source is only padding
        dec = np.array([[2, 5, 6], [2, 4, 0], [0, 0, 0]], "int32")  # row 2: target is only padding
        out = model({"encoder_inputs": enc, "decoder_inputs": dec}, training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        logits = keras.ops.convert_to_numpy(out)
        assert logits.shape == (3, 3, TGT_VOCAB)
        assert np.all(np.isfinite(logits))
        assert model.encoder_layers[0].compute_dtype == policy.split("_")[1]
        assert model.encoder_layers[0].self_attention.query_dense.compute_dtype == policy.split("_")[1]
        assert keras.mixed_precision.dtype_policy().name == "float32"


# --------------------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    return build_transformer(tiny())


def test_float_ids_raise(tiny_model):
    enc = np.array([[3, 4, 5]], "float32")
    dec = np.array([[2, 3]], "int32")
    with pytest.raises(ValueError, match="integer"):
        tiny_model({"encoder_inputs": enc, "decoder_inputs": dec})
    with pytest.raises(ValueError, match="integer"):
        tiny_model({"encoder_inputs": dec, "decoder_inputs": dec.astype("float32")})


def test_rank3_ids_raise(tiny_model):
    enc = np.ones((2, 4, 2), "int32")
    dec = np.ones((2, 3), "int32")
    with pytest.raises(ValueError, match="shape"):
        tiny_model({"encoder_inputs": enc, "decoder_inputs": dec})
    # The embedding layer itself checks the rank too.
    embedding = TokenEmbedding(10, 8)
    with pytest.raises(ValueError, match="shape"):
        embedding(np.ones((2, 4, 2), "int32"))


def test_ids_outside_vocabulary_raise(tiny_model):
    enc = np.array([[3, SRC_VOCAB]], "int32")
    dec = np.array([[2, 3]], "int32")
    with pytest.raises(ValueError, match="outside"):
        tiny_model({"encoder_inputs": enc, "decoder_inputs": dec})
    with pytest.raises(ValueError, match="outside"):
        tiny_model({"encoder_inputs": dec, "decoder_inputs": np.array([[2, TGT_VOCAB + 5]], "int32")})
    with pytest.raises(ValueError, match="outside"):
        tiny_model({"encoder_inputs": np.array([[-1, 3]], "int32"), "decoder_inputs": dec})
    # In a compiled graph (predict), the check is an assertion with the same message.
    with pytest.raises(Exception, match="outside"):
        tiny_model.predict({"encoder_inputs": enc, "decoder_inputs": dec}, verbose=0)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as info:
        TransformerConfig.from_preset("huge")
    for name in PRESETS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(d_model=32, num_heads=5), "divide"),
        (dict(share_embeddings=True, src_vocab_size=10, tgt_vocab_size=11), "vocab"),
        (dict(dropout_rate=-0.1), "dropout"),
        (dict(dropout_rate=1.0), "dropout"),
        (dict(share_embeddings=True, encoder_input_dim=3), "encoder_input_dim"),
        (dict(num_layers=0), "num_layers"),
        (dict(pad_id=-1), "pad_id"),
    ],
)
def test_invalid_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig.from_preset("tiny", **overrides)


def test_build_transformer_rejects_non_config():
    with pytest.raises(TypeError):
        build_transformer(PRESETS["tiny"])
    with pytest.raises(TypeError):
        build_transformer(None)


# --------------------------------------------------------------------------------------------------------------
# Non-text encoder and the config object.
# --------------------------------------------------------------------------------------------------------------


def test_feature_vector_encoder():
    config = tiny(encoder_input_dim=3)
    model = build_transformer(config)
    features = np.random.default_rng(0).normal(size=(2, 30, 3)).astype("float32")
    dec = np.array([[2, 4, 5], [2, 5, 0]], "int32")
    logits = run_model(model, features, dec)
    assert logits.shape == (2, 3, TGT_VOCAB)
    assert np.all(np.isfinite(logits))
    assert isinstance(model.source_embedding, keras.layers.Dense)
    # A zero feature vector is a real position, not padding: changing it changes the output.
    zeroed = features.copy()
    zeroed[:, -5:] = 0.0
    assert not np.allclose(run_model(model, zeroed, dec), logits, atol=1e-4)


def test_attention_weights_for_feature_vector_encoder():
    config = tiny(encoder_input_dim=3)
    model = build_transformer(config)
    features = np.random.default_rng(0).normal(size=(2, 30, 3)).astype("float32")
    dec = np.array([[2, 4, 5], [2, 5, 0]], "int32")
    weights = attention_weights(model, config, features, dec)
    assert weights["encoder_self_attention"][0].shape == (2, config.num_heads, 30, 30)
    # Feature vectors are never masked: every cross-attention row sums to one.
    np.testing.assert_allclose(weights["cross_attention"][0].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(weights["logits"], run_model(model, features, dec), atol=1e-5)


def test_config_dict_and_json_round_trip():
    config = TransformerConfig.from_preset(
        "small", src_vocab_size=1234, tgt_vocab_size=999, norm_first=True, dropout_rate=0.2
    )
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert TransformerConfig.from_dict(json.loads(config.to_json())) == config
    with pytest.raises(ValueError, match="Unknown"):
        TransformerConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_from_preset_overrides():
    config = TransformerConfig.from_preset("base", num_layers=2, tgt_vocab_size=77)
    assert config.num_layers == 2
    assert config.tgt_vocab_size == 77
    assert config.d_model == PRESETS["base"]["d_model"] == 512
    assert config.num_heads == 8 and config.dff == 2048 and config.dropout_rate == 0.1
    big = TransformerConfig.from_preset("big")
    assert (big.d_model, big.num_heads, big.dff, big.dropout_rate) == (1024, 16, 4096, 0.3)
    assert config.replace(num_heads=4).num_heads == 4
