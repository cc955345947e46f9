"""Shared fixtures and helpers for the keras_transformer test suite.

Everything here is sized for a shared 2-core CPU: tiny models, short sequences, few steps.
"""

import os

# Must be set before TensorFlow is imported anywhere.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras  # noqa: E402

from keras_transformer import TransformerConfig  # noqa: E402

SRC_VOCAB = 23
TGT_VOCAB = 19
PAD = 0


def pytest_configure(config):
    # numpy 2 + TensorFlow noise from keras' own convert_to_numpy; not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    )


@pytest.fixture(autouse=True)
def _seeded_float32_policy():
    """Every test starts from a fixed seed and the float32 policy, and leaves the policy as it found it."""
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def tiny_config():
    """The `tiny` preset (2 layers, d_model 32, 4 heads) with small, different source/target vocabularies."""
    return TransformerConfig.from_preset("tiny", src_vocab_size=SRC_VOCAB, tgt_vocab_size=TGT_VOCAB)


def tiny(**overrides):
    """`tiny` preset with the test vocabularies and some fields overridden."""
    values = dict(src_vocab_size=SRC_VOCAB, tgt_vocab_size=TGT_VOCAB)
    values.update(overrides)
    return TransformerConfig.from_preset("tiny", **values)


def random_ids(rng, batch, length, vocab, low=1):
    """Non-pad ids in [low, vocab) as int32."""
    return rng.integers(low, vocab, size=(batch, length)).astype("int32")


def run_model(model, encoder_inputs, decoder_inputs, training=False):
    """Eager forward pass, returned as numpy."""
    out = model({"encoder_inputs": encoder_inputs, "decoder_inputs": decoder_inputs}, training=training)
    return keras.ops.convert_to_numpy(out)


def numpy_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """A tiny translator trained for a few seconds on 3,000 bundled pairs (run directory with tokenizers and
    model.keras). Its outputs are poor but not empty, which is what equality tests of exports need. (lr_scale 0.1:
    the paper's formula gives d_model=32 a learning rate ten times too high, which makes it emit only END.)"""
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.training import TrainingConfig, train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    settings = TrainingConfig(
        preset="tiny", train_limit=3000, source_vocab_size=1500, target_vocab_size=1000, steps_per_epoch=100,
        epochs=2, warmup_steps=40, lr_scale=0.1, tokens_per_batch=1024, dev_bleu_sentences=0, time_limit_minutes=None,
        max_length=32, precision="float32",
    )
    train(settings, run_dir, load_bundled_corpus("train"), load_bundled_corpus("dev"), verbose=0)
    return run_dir
