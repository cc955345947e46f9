"""Exports give the same outputs as the Keras model: SavedModel in a fresh process, TFLite in ai_edge_litert."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import cli_in_process
from keras_transformer.data import load_bundled_corpus
from keras_transformer.evaluation import corpus_scores
from keras_transformer.export.saved_model import export_saved_model, next_version
from keras_transformer.export.tflite import TFLiteTranslator, export_tflite
from keras_transformer.translator import Translator, load_translator

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def translator(tiny_run_dir):
    return Translator.load(tiny_run_dir)


@pytest.fixture(scope="module")
def dev_sources():
    return load_bundled_corpus("dev").sources[:50]


@pytest.fixture(scope="module")
def saved_model_dir(translator, tmp_path_factory):
    return export_saved_model(translator, tmp_path_factory.mktemp("exports"), "translator")


def test_saved_model_layout_and_versions(saved_model_dir):
    assert saved_model_dir.name == "1" and saved_model_dir.parent.name == "translator"
    assert {"saved_model.pb", "variables", "assets"} <= {p.name for p in saved_model_dir.iterdir()}
    assert {"source.model", "target.model", "source.vocab", "target.vocab"} <= {p.name for p in (saved_model_dir / "assets").iterdir()}
    assert next_version(saved_model_dir.parent) == 2
    assert not [p for p in saved_model_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left over


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the SentencePiece op; nothing of keras_transformer is imported
    loaded = tf.saved_model.load(sys.argv[1])
    sources = json.loads(sys.stdin.read())
    text = loaded.signatures["serving_default"](inputs=tf.constant(sources["texts"]))
    ids = loaded.signatures["translate_ids"](encoder_inputs=tf.constant(sources["ids"], tf.int32))
    print(json.dumps({
        "translations": [t.decode("utf-8") for t in text["translations"].numpy()],
        "scores": text["scores"].numpy().tolist(),
        "output_ids": ids["output_ids"].numpy().tolist(),
        "imported_keras_transformer": any(m.startswith("keras_transformer") for m in sys.modules),
    }))
    """
)


def test_saved_model_in_a_fresh_process_matches_the_keras_translator(translator, saved_model_dir, dev_sources):
    texts = dev_sources[:20]
    ids = translator.encode_sources(texts[:4])
    width = max(map(len, ids))
    ids = [row + [0] * (width - len(row)) for row in ids]
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(saved_model_dir)], input=json.dumps({"texts": texts, "ids": ids}),
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["imported_keras_transformer"]
    expected, scores = translator.translate(texts, return_scores=True)
    assert result["translations"] == expected
    assert any(expected)  # not a vacuous comparison of empty strings
    np.testing.assert_allclose(result["scores"], scores, atol=1e-3)
    keras_ids, _ = translator.translate_ids(np.array(ids, np.int32))
    np.testing.assert_array_equal(np.array(result["output_ids"]), keras_ids)


def test_export_refuses_an_existing_version(translator, saved_model_dir):
    with pytest.raises(FileExistsError):
        export_saved_model(translator, saved_model_dir.parent.parent, "translator", version=1)


@pytest.fixture(scope="module")
def tflite_models(translator, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tflite")
    return {q: export_tflite(translator, directory / q / "model.tflite", quantize=q) for q in ("none", "float16", "dynamic")}


def test_tflite_float32_translations_equal_keras_greedy(translator, tflite_models, dev_sources):
    runner = TFLiteTranslator.load(tflite_models["none"])
    expected = translator.translate(dev_sources)
    assert runner.translate(dev_sources) == expected
    assert sum(bool(e) for e in expected) > 25


def test_quantized_tflite_models_stay_close_and_finite(translator, tflite_models, dev_sources):
    reference = TFLiteTranslator.load(tflite_models["none"]).translate(dev_sources)
    sizes = {q: path.stat().st_size for q, path in tflite_models.items()}
    for quantize, min_agreement in (("float16", 90.0), ("dynamic", 40.0)):
        runner = TFLiteTranslator.load(tflite_models[quantize])
        outputs = runner.translate(dev_sources)
        # BLEU of the quantized outputs against the float32 outputs: 100 = identical.
        agreement = corpus_scores(outputs, reference)["bleu"]
        assert agreement >= min_agreement, (quantize, agreement)
        for source in dev_sources[:10]:
            _, score = runner.translate_ids(translator.encode_sources([source])[0], return_scores=True)
            assert np.isfinite(score)
    assert sizes["float16"] < 0.6 * sizes["none"]
    assert sizes["dynamic"] < 0.45 * sizes["none"]


def test_one_translate_command_for_all_three_artefacts(tiny_run_dir, saved_model_dir, tflite_models):
    sentences = ["설정", "파일을 열 수 없습니다", "어제 카페 갔었어 거기 사람 많더라"]
    outputs = {}
    for name, path in (("keras", tiny_run_dir), ("saved_model", saved_model_dir.parent), ("tflite", tflite_models["none"])):
        out = cli_in_process("translate", "--model", path, *sentences)
        assert out.returncode == 0, out.stderr[-2000:]
        outputs[name] = out.stdout
    assert outputs["keras"] == outputs["saved_model"] == outputs["tflite"]
    assert load_translator(tflite_models["none"]).translate(sentences) == outputs["keras"].splitlines()


IDS_ONLY_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf  # no tensorflow_text: the SentencePiece ops are not registered in this process
    loaded = tf.saved_model.load(sys.argv[1])
    ids = json.loads(sys.stdin.read())
    out = loaded.signatures["serving_default"](encoder_inputs=tf.constant(ids, tf.int32))
    print(json.dumps({"output_ids": out["output_ids"].numpy().tolist(),
                      "text_ops_loaded": any(m.startswith("tensorflow_text") for m in sys.modules)}))
    """
)


def test_ids_only_saved_model_loads_without_tensorflow_text(translator, tmp_path, dev_sources):
    path = export_saved_model(translator, tmp_path, "translator", ids_only=True)
    assert json.loads((path / "assets" / "config.json").read_text())["special_ids"]["end"] == 3
    ids = translator.encode_sources(dev_sources[:5])
    width = max(map(len, ids))
    ids = [row + [0] * (width - len(row)) for row in ids]
    out = subprocess.run([sys.executable, "-c", IDS_ONLY_PROCESS, str(path)], input=json.dumps(ids),
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["text_ops_loaded"]
    keras_ids, _ = translator.translate_ids(np.array(ids, np.int32))
    np.testing.assert_array_equal(np.array(result["output_ids"]), keras_ids)


PLACEHOLDER_SOURCES = ["%1 파일을 열 수 없습니다: %2", "%s의 %d개 항목", "{0} 님, 안녕하세요", "%(name)s 삭제", "설정", "%1$s 및 %2$s"]


def test_every_path_protects_placeholders_the_same_way(translator, saved_model_dir, tmp_path):
    """Translator, generate, the SavedModel's string signature (what `serve` runs) and the TFLite runner give the
    same translations of sentences with placeholders, and each keeps exactly the source's placeholders."""
    from keras_transformer.data.placeholders import find_placeholders, placeholder_agreement

    assert translator.preprocessor.placeholder_ids is not None  # tokenizers of this version hold the tokens
    keras_out = translator.translate(PLACEHOLDER_SOURCES)
    assert translator.task.generate(PLACEHOLDER_SOURCES) == keras_out
    assert load_translator(saved_model_dir).translate(PLACEHOLDER_SOURCES) == keras_out
    tflite = export_tflite(translator, tmp_path / "m.tflite")
    assert TFLiteTranslator.load(tflite).translate(PLACEHOLDER_SOURCES) == keras_out
    for source, output in zip(PLACEHOLDER_SOURCES, keras_out):
        assert sorted(find_placeholders(output)) == sorted(find_placeholders(source)), (source, output)
    assert placeholder_agreement(PLACEHOLDER_SOURCES, keras_out)["hypothesis_percent"] == 100.0
    beams = translator.translate_nbest(PLACEHOLDER_SOURCES, decoding="beam", beam_size=3)
    for source, hypotheses in zip(PLACEHOLDER_SOURCES, beams):
        for text, _ in hypotheses:
            assert sorted(find_placeholders(text)) == sorted(find_placeholders(source)), (source, text)


def test_decoding_never_emits_a_placeholder_token_the_source_lacks(translator):
    """The mask, not restore's repair: with every logit pushed towards ⦅5⦆, a source with two placeholders still
    never gets ⦅3⦆..⦅16⦆, and one without placeholders gets none."""
    from keras_transformer.decoding.state import allowed_placeholders
    from keras_transformer.translator import pad_batch

    source_ids, target_ids, raw_ids = translator.preprocessor.placeholder_ids
    assert {translator.target_tokenizer.id_to_piece[i].lstrip("\u2581") for i in raw_ids} >= {"%s", "%d", "%1"}
    encoder_ids = pad_batch(translator.encode_sources(["%1 및 %2", "설정"]), max_length=translator.config.max_length)
    allowed = allowed_placeholders(encoder_ids, (source_ids, target_ids, raw_ids), translator.config.tgt_vocab_size).numpy()
    assert allowed[0, list(target_ids[:2])].all() and not allowed[0, list(target_ids[2:])].any()
    assert not allowed[1, list(target_ids)].any() and not allowed[:, list(raw_ids)].any()
    vocab = translator.config.tgt_vocab_size
    assert allowed[:, 4:].sum(axis=1).tolist() == [vocab - 4 - 14 - len(raw_ids), vocab - 4 - 16 - len(raw_ids)]
    ids, _ = translator.translate_ids(encoder_ids, "sample", temperature=50.0, seed=1)  # nearly uniform choice
    for row, count in zip(ids, (2, 0)):
        assert not set(row.tolist()) & (set(target_ids[count:]) | set(raw_ids))
