"""The keras-hub model: every layer passes the shared layer test; the backbone and the task round-trip through their
configs, presets and `.keras` files, fit on strings, generate with keras-hub sampler names, and load alone in a
fresh process."""

import doctest
import importlib
import json
import os
import subprocess
import sys
import warnings

import keras
import keras_hub
import numpy as np
import pytest

from keras_transformer import TransformerBackbone, TransformerSeq2SeqLM, build_transformer
from keras_transformer.layers import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    PositionalEncoding,
    PositionwiseFeedForward,
    TokenEmbedding,
)
from layer_test_case import run_layer_test

from conftest import cli_in_process, tiny

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
X = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
MEMORY = np.random.default_rng(1).normal(size=(2, 7, 16)).astype("float32")


@pytest.mark.parametrize(
    "layer_cls, init_kwargs, inputs, shape",
    [
        (PositionalEncoding, dict(max_length=8, d_model=16), X, (2, 5, 16)),
        (MultiHeadAttention, dict(d_model=16, num_heads=4), (X, MEMORY), (2, 5, 16)),
        (PositionwiseFeedForward, dict(d_model=16, dff=32), X, (2, 5, 16)),
        (EncoderLayer, dict(d_model=16, num_heads=4, dff=32, dropout_rate=0.0), X, (2, 5, 16)),
        (EncoderLayer, dict(d_model=16, num_heads=4, dff=32, dropout_rate=0.0, norm_first=True), X, (2, 5, 16)),
        (DecoderLayer, dict(d_model=16, num_heads=4, dff=32, dropout_rate=0.0), (X, MEMORY), (2, 5, 16)),
        (TokenEmbedding, dict(vocab_size=11, d_model=16), np.array([[1, 2, 3], [4, 0, 0]], "int32"), (2, 3, 16)),
    ],
    ids=["positional_encoding", "attention", "feed_forward", "encoder", "encoder_pre_ln", "decoder", "embedding"],
)
def test_every_layer_passes_the_layer_test(layer_cls, init_kwargs, inputs, shape, tmp_path):
    run_layer_test(layer_cls, init_kwargs, inputs, shape, tmp_path=tmp_path)


# --------------------------------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("overrides", [{}, {"norm_first": True}, {"share_embeddings": True, "src_vocab_size": 19}, {"encoder_input_dim": 3}])
def test_backbone_config_round_trip_rebuilds_the_same_model(overrides):
    backbone = build_transformer(tiny(**overrides))
    assert isinstance(backbone, TransformerBackbone) and isinstance(backbone, keras_hub.models.Backbone)
    config = backbone.get_config()
    for field, value in backbone.config.to_dict().items():
        assert config[field] == value, field
    rebuilt = TransformerBackbone.from_config(config)
    rebuilt.set_weights(backbone.get_weights())
    enc = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32") if overrides.get("encoder_input_dim") else np.array([[5, 6, 7, 3, 0, 0], [4, 3, 0, 0, 0, 0]], "int32")
    x = {"encoder_inputs": enc, "decoder_inputs": np.array([[2, 5, 6], [2, 4, 0]], "int32")}
    np.testing.assert_allclose(np.asarray(rebuilt(x)), np.asarray(backbone(x)), atol=1e-6)
    assert len(backbone.encoder_layers) == len(backbone.decoder_layers) == backbone.config.num_layers
    assert (backbone.output_projection is None) == bool(overrides.get("share_embeddings"))
    assert (backbone.encoder_norm is not None) == bool(overrides.get("norm_first"))


def test_backbone_dtype_is_one_argument_and_with_dtype_copies_the_weights():
    mixed = build_transformer(tiny(), dtype="mixed_bfloat16")
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert {layer.compute_dtype for layer in mixed.encoder_layers + mixed.decoder_layers} == {"bfloat16"}
    assert TransformerBackbone.from_config(mixed.get_config()).encoder_layers[0].compute_dtype == "bfloat16"
    x = {"encoder_inputs": np.array([[5, 6, 3]], "int32"), "decoder_inputs": np.array([[2, 5]], "int32")}
    assert keras.backend.standardize_dtype(mixed(x).dtype) == "float32"  # logits stay float32
    full = mixed.with_dtype("float32")
    assert full is not mixed and full.encoder_layers[0].compute_dtype == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(full.get_weights(), mixed.get_weights()))
    assert full.with_dtype("float32") is full
    np.testing.assert_allclose(np.asarray(full(x)), np.asarray(mixed(x)), atol=0.05)


# ------------------------------------------------------------------------------------------------------- task
@pytest.fixture(scope="module")
def lm(tiny_run_dir):
    from keras_transformer.run_directory import load_seq2seq_lm

    return load_seq2seq_lm(tiny_run_dir)


def test_run_directory_model_is_a_task_with_its_tokenizers_and_no_optimizer_state(lm, tiny_run_dir):
    assert isinstance(lm, TransformerSeq2SeqLM) and isinstance(lm, keras_hub.models.Seq2SeqLM)
    assert lm.preprocessor.source_tokenizer.vocab_size == lm.backbone.config.src_vocab_size
    weights_bytes = sum(w.size * 4 for w in lm.get_weights())
    size = (tiny_run_dir / "model.keras").stat().st_size
    assert size < 1.5 * weights_bytes + 200_000, (size, weights_bytes)  # Adam would add 2x the weights


def test_inference_model_saves_the_same_logits_with_or_without_an_optimizer(lm, tmp_path):
    """`save_inference_model` writes a task without an optimizer as it is, and one that has an optimizer through an
    uncompiled copy: both files load alone, give the task's logits and hold no optimizer state."""
    from keras_transformer.run_directory import load_seq2seq_lm, save_inference_model

    inputs = {"encoder_inputs": np.array([[5, 9, 14, 3]], np.int32), "decoder_inputs": np.array([[2, 7, 11]], np.int32)}
    expected = keras.ops.convert_to_numpy(lm.backbone(inputs))
    plain = TransformerSeq2SeqLM(lm.backbone, lm.preprocessor, compile=False)
    compiled = TransformerSeq2SeqLM(lm.backbone, lm.preprocessor)
    compiled.compile(optimizer=keras.optimizers.Adam())
    compiled.optimizer.build(compiled.trainable_variables)  # Adam's two slots per weight exist: saved, they would show
    weights_bytes = sum(w.size * 4 for w in lm.backbone.get_weights())
    for name, task in (("plain", plain), ("compiled", compiled)):
        path = save_inference_model(task, tmp_path / f"{name}.keras")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(load_seq2seq_lm(path).backbone(inputs)), expected, atol=1e-6)
        assert path.stat().st_size < 1.5 * weights_bytes + 200_000, (name, path.stat().st_size)


def test_generate_uses_our_decoder_and_the_keras_hub_sampler_names(lm):
    from keras_transformer.translator import Translator

    sentences = ["파일을 열 수 없습니다", "설정"]
    translator = Translator(lm)
    lm.compile(sampler="greedy")
    assert lm.generate(sentences) == translator.translate(sentences)
    assert isinstance(lm.generate("설정"), str)
    lm.compile(sampler=keras_hub.samplers.BeamSampler(num_beams=3))
    assert lm.generate(sentences) == translator.translate(sentences, decoding="beam", beam_size=3)
    lm.compile(sampler=keras_hub.samplers.TopKSampler(k=1, seed=3))
    assert lm.generate(sentences) == translator.translate(sentences)  # top-1 sampling is greedy
    lm.compile(sampler="top_p")
    assert len(lm.generate(sentences)) == 2
    for unsupported in ("contrastive", keras_hub.samplers.RandomSampler()):
        with pytest.raises(ValueError, match="not supported by TransformerSeq2SeqLM; supported: greedy, beam, top_k, top_p"):
            lm.compile(sampler=unsupported)
    lm.compile()


def test_fit_on_raw_string_pairs_through_the_preprocessor(lm):
    from keras_transformer.backbone import TransformerBackbone as Backbone

    backbone = Backbone.from_config(lm.backbone.get_config())
    backbone.set_weights(lm.backbone.get_weights())
    task = TransformerSeq2SeqLM(backbone, lm.preprocessor)
    before = [w.copy() for w in backbone.get_weights()]
    pairs = {"encoder_text": ["설정", "파일을 열 수 없습니다"] * 4, "decoder_text": ["Settings", "Cannot open the file"] * 4}
    history = task.fit(pairs, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, backbone.get_weights()))
    x, labels = lm.preprocessor({"encoder_text": ["설정"], "decoder_text": ["Settings"]})
    target = lm.preprocessor.target_tokenizer.encode("Settings")
    assert x["decoder_inputs"].numpy()[0].tolist() == [2] + target  # START + target
    assert labels.numpy()[0].tolist() == target + [3]  # target + END
    assert x["encoder_inputs"].numpy()[0].tolist() == lm.preprocessor.encode_sources(["설정"])[0]


# Loads a preset (argv[1]) and a .keras file (argv[2]) in a process of its own: each must bring everything it needs.
FRESH_PROCESS = """
import json, sys
from keras_transformer import TransformerSeq2SeqLM, load_model
models = {"preset": TransformerSeq2SeqLM.from_preset(sys.argv[1]), "keras": load_model(sys.argv[2])}
print(json.dumps({kind: lm.generate(["파일을 열 수 없습니다", "설정"]) for kind, lm in models.items()}))
"""


def test_preset_and_keras_file_translate_alone_in_a_fresh_process(lm, tmp_path):
    expected = lm.generate(["파일을 열 수 없습니다", "설정"])
    preset = tmp_path / "preset"
    lm.save_to_preset(str(preset))
    assert (preset / "assets" / "source_tokenizer" / "vocabulary.spm").is_file()
    assert (preset / "assets" / "target_tokenizer" / "vocabulary.spm").is_file()
    alone = tmp_path / "alone"
    alone.mkdir()
    keras_file = alone / "model.keras"
    lm.save(keras_file)
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(preset), str(keras_file)], capture_output=True,
                         text=True, env=ENV, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"preset": expected, "keras": expected}


def test_missing_or_corrupt_preset_gives_a_clear_error(lm, tmp_path):
    from keras_transformer.run_directory import RunDirectoryError, load_seq2seq_lm

    preset = tmp_path / "preset"
    lm.save_to_preset(str(preset))
    (preset / "model.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete keras-transformer preset: missing model.weights.h5"):
        load_seq2seq_lm(preset)
    (preset / "model.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(RunDirectoryError, match="could not be loaded"):
        load_seq2seq_lm(preset)
    cut = tmp_path / "cut.keras"
    cut.write_bytes((tmp_path / "preset" / "config.json").read_bytes()[:10])
    with pytest.raises(RunDirectoryError, match="not a complete .keras file"):
        load_seq2seq_lm(cut)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_seq2seq_lm(tmp_path / "nowhere")


def test_run_directory_of_the_previous_version_loads_with_a_warning(lm, tiny_run_dir, tmp_path):
    """keras-transformer 0.1 wrote a plain functional model beside config.json and the tokenizers: it is converted
    (weights copied layer by layer) and translates exactly as before."""
    import shutil

    from keras_transformer.translator import Translator

    old = tmp_path / "old-run"
    old.mkdir()
    for name in ("config.json", "source.model", "target.model"):
        shutil.copy(tiny_run_dir / name, old / name)
    functional = keras.Model(lm.backbone.input, lm.backbone.output, name="transformer")
    functional.save(old / "model.keras")
    with pytest.warns(UserWarning, match="written by keras-transformer 0.1"):
        translator = Translator.load(old)
    sentences = ["파일을 열 수 없습니다", "설정"]
    assert translator.translate(sentences) == Translator(lm).translate(sentences)
    upgraded = cli_in_process("upgrade", "--model", old)
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conversion warning any more: the file is a TransformerSeq2SeqLM now
        assert Translator.load(old).translate(sentences) == translator.translate(sentences)


def test_mixed_precision_model_decodes_with_float32_weights_like_the_float32_export(lm):
    """A model trained in mixed_bfloat16 decodes on a CPU with float32 weights ("auto"): the tokens of the float32
    model (what every export holds)."""
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.translator import Translator, pad_batch

    mixed = TransformerSeq2SeqLM(lm.backbone.with_dtype("mixed_bfloat16"), lm.preprocessor)
    auto = Translator(mixed)
    assert auto.decode_precision == "float32"
    as_trained = Translator(mixed, decode_precision="model")
    assert as_trained.decode_precision == "mixed_bfloat16"
    float32 = Translator(lm, decode_precision="float32")
    sentences = load_bundled_corpus("dev").sources[:40]
    encoder_ids = pad_batch(auto.encode_sources(sentences), max_length=auto.config.max_length)
    np.testing.assert_array_equal(auto.translate_ids(encoder_ids)[0], float32.translate_ids(encoder_ids)[0])


def test_int8_decoding_quantizes_a_copy_and_stays_close_to_float32(lm):
    """decode_precision="int8" decodes with a copy whose dense layers are int8 (kernels int8, products int32); the
    model keeps its float32 weights, and greedy output stays close to float32's (most sentences identical)."""
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.translator import Translator, pad_batch

    before = [w.copy() for w in lm.backbone.get_weights()]
    int8 = Translator(lm, decode_precision="int8")
    float32 = Translator(lm, decode_precision="float32")
    dense = [layer for layer in int8._decode_model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    # Per encoder + decoder layer pair: Q/K/V/O of three attention blocks and the feed-forward's two; + the projection.
    assert len(dense) == 16 * lm.backbone.config.num_layers + 1
    assert all(layer.quantization_mode == "int8" and keras.backend.standardize_dtype(layer._kernel.dtype) == "int8" for layer in dense)
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in lm.backbone.weights)
    for old, new in zip(before, lm.backbone.get_weights()):
        np.testing.assert_array_equal(old, new)
    sentences = load_bundled_corpus("dev").sources[:40]
    encoder_ids = pad_batch(int8.encode_sources(sentences), max_length=int8.config.max_length)
    ids8, ids32 = int8.translate_ids(encoder_ids)[0], float32.translate_ids(encoder_ids)[0]
    identical = np.mean([np.array_equal(a, b) for a, b in zip(ids8, ids32)])
    assert identical >= 0.75, identical  # 37 of 40 when written
    with pytest.raises(ValueError, match="decode_precision must be auto, model, float32, .*int8"):
        Translator(lm, decode_precision="int4")


@pytest.mark.parametrize("decode_precision", ["float32", "int8"])
def test_refresh_weights_brings_the_models_new_weights_into_the_decoding_copy(lm, decode_precision):
    """A Translator decoding a copy (float32 of a mixed-precision model, or int8) decodes the model's weights as
    they were; `refresh_weights()` brings the new ones in: here an output bias that makes END win at once."""
    from keras_transformer.data.special_ids import END_ID
    from keras_transformer.translator import Translator

    model = TransformerSeq2SeqLM(lm.backbone.with_dtype("mixed_bfloat16"), lm.preprocessor)
    translator = Translator(model, decode_precision=decode_precision, max_output_length=8)
    sentences = ["어제 카페 갔었어", "거기 사람 많더라"]
    before = translator.translate(sentences)
    assert before != ["", ""]
    bias = model.backbone.output_projection.bias
    bias.assign(keras.ops.convert_to_numpy(bias) + 100.0 * (np.arange(bias.shape[0]) == END_ID))
    assert translator.translate(sentences) == before  # still the copy's old weights
    translator.refresh_weights()
    assert translator.translate(sentences) == ["", ""]


DOCTESTED = ["keras_transformer.backbone", "keras_transformer.model", "keras_transformer.metrics",
             "keras_transformer.layers.positional_encoding", "keras_transformer.layers.token_embedding",
             "keras_transformer.layers.decoder_layer", "keras_transformer.layers.encoder_layer",
             "keras_transformer.layers.feed_forward", "keras_transformer.layers.multi_head_attention",
             "keras_transformer.decoding.decodings", "keras_transformer.seq_2_seq_lm", "keras_transformer.translator"]


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module}"
