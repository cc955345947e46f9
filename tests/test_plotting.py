"""Tests for keras_transformer.plotting: every figure is a real PNG, and Hangul renders with NanumGothic."""

import os
import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib.font_manager import FontProperties, findfont

from keras_transformer import WarmupSchedule, plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KOREAN = ["어제", "카페", "갔었어", "▁요"]


def assert_png(path, min_bytes=2_000):
    assert os.path.isfile(path), path
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC
    assert min_bytes < len(data) < 2_000_000, len(data)


def glyph_warnings(records):
    return [str(r.message) for r in records if "missing from" in str(r.message) or "Glyph" in str(r.message)]


def test_korean_font_is_found_and_resolves_to_nanumgothic():
    path = plotting.korean_font_path()
    assert path is not None and os.path.basename(path) == "NanumGothic.ttf"
    rc = plotting._korean_font()
    assert rc["axes.unicode_minus"] is False
    assert rc["font.family"][0] == "NanumGothic"
    resolved = findfont(FontProperties(family=rc["font.family"]), fallback_to_default=False)
    assert os.path.samefile(resolved, path)


def test_korean_font_does_not_touch_global_rcparams():
    before = (list(matplotlib.rcParams["font.family"]), matplotlib.rcParams["axes.unicode_minus"])
    plotting._korean_font()
    assert (list(matplotlib.rcParams["font.family"]), matplotlib.rcParams["axes.unicode_minus"]) == before


def test_plot_attention_hangul_renders_without_missing_glyphs(tmp_path):
    weights = np.random.default_rng(0).dirichlet(np.ones(4), size=(2, 3)).astype("float32")  # [2, 3, 4]
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        path = plotting.plot_attention(
            weights, ["나는", "어제", "카페"], KOREAN, tmp_path / "attention.png", title="어제 카페 갔었어 −1"
        )
    assert glyph_warnings(records) == []
    assert_png(path)


def test_missing_glyph_check_detects_boxes(tmp_path):
    """Control: the warning the test above relies on does fire when Hangul is drawn without NanumGothic."""
    from matplotlib.figure import Figure

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
            figure = Figure()
            figure.suptitle("어제 카페 갔었어")
            figure.savefig(tmp_path / "boxes.png")
    assert glyph_warnings(records)


def test_plot_attention_max_heads_and_2d(tmp_path):
    weights = np.full((8, 2, 3), 1 / 3, dtype="float32")
    assert_png(plotting.plot_attention(weights, ["a", "b"], ["x", "y", "z"], tmp_path / "a.png", max_heads=3))
    assert_png(plotting.plot_attention(weights[0], ["a", "b"], ["x", "y", "z"], tmp_path / "sub" / "b.png"))


@pytest.mark.parametrize(
    "shape, queries, keys",
    [
        ((2, 3, 4), ["a", "b"], ["w", "x", "y", "z"]),  # query length mismatch
        ((2, 3, 4), ["a", "b", "c"], ["w", "x", "y"]),  # key length mismatch
        ((1, 2, 3, 4), ["a", "b", "c"], ["w", "x", "y", "z"]),  # batch axis left in
        ((4,), ["a"], ["w", "x", "y", "z"]),
    ],
)
def test_plot_attention_bad_shapes(tmp_path, shape, queries, keys):
    with pytest.raises(ValueError):
        plotting.plot_attention(np.zeros(shape), queries, keys, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_attention_bad_max_heads(tmp_path):
    with pytest.raises(ValueError, match="max_heads"):
        plotting.plot_attention(np.zeros((2, 1, 1)), ["a"], ["b"], tmp_path / "bad.png", max_heads=0)


def test_plot_attention_for_sentence(tmp_path, tiny_run_dir):
    from keras_transformer.translator import Translator

    translator = Translator.load(tiny_run_dir)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        paths = plotting.plot_attention_for_sentence(translator, "나는 어제 카페 갔었어", "I went to a cafe yesterday", tmp_path)
    assert glyph_warnings(records) == []
    assert len(paths) == 3
    assert [os.path.basename(p) for p in paths] == [
        "encoder_self_attention_layer2.png",
        "decoder_self_attention_layer2.png",
        "cross_attention_layer2.png",
    ]
    for path in paths:
        assert_png(path, min_bytes=10_000)

    # The ids are the preprocessor's: source + END, START + target, and a long source is cut like everywhere else.
    encoder_ids, decoder_ids = translator.preprocessor.pair_ids("어제 카페", "cafe")
    assert encoder_ids == translator.encode_sources(["어제 카페"])[0]
    assert decoder_ids == [2] + translator.target_tokenizer.encode("cafe")
    with pytest.warns(UserWarning, match="were cut"):
        long_ids, _ = translator.preprocessor.pair_ids("어제 카페 " * 40)
    assert len(long_ids) == translator.config.max_length

    # No target: the decoder reads START only; first layer; bad layer index.
    paths = plotting.plot_attention_for_sentence(translator, "어제 카페", None, tmp_path / "s", layer=0)
    assert all(p.endswith("_layer1.png") for p in paths)
    for path in paths:
        assert_png(path)
    with pytest.raises(ValueError, match="layer"):
        plotting.plot_attention_for_sentence(translator, "어제", None, tmp_path, layer=2)


def test_plot_positional_encoding(tmp_path):
    assert_png(plotting.plot_positional_encoding(50, 64, tmp_path / "pe.png"), min_bytes=10_000)
    with pytest.raises(ValueError):
        plotting.plot_positional_encoding(0, 64, tmp_path / "bad.png")


def test_plot_learning_rate(tmp_path):
    schedule = WarmupSchedule(d_model=128, warmup_steps=400)
    assert_png(plotting.plot_learning_rate(schedule, 2000, tmp_path / "lr.png"))
    # Warm-up longer than the plotted range: the highest plotted step is marked.
    assert_png(plotting.plot_learning_rate(schedule, 100, tmp_path / "lr_short.png"))
    with pytest.raises(ValueError):
        plotting.plot_learning_rate(schedule, 0, tmp_path / "bad.png")


def test_plot_training_curves(tmp_path):
    history = {
        "loss": [4.0, 3.0, 2.5],
        "val_loss": [4.2, 3.4, 3.0],
        "masked_accuracy": [0.1, 0.3, 0.4],
        "val_masked_accuracy": [0.1, 0.25, 0.35],
        "val_bleu": [1.0, 5.0, 9.0],
    }
    assert_png(plotting.plot_training_curves(history, tmp_path / "curves.png"))
    assert_png(plotting.plot_training_curves({"loss": [2.0, 1.0]}, tmp_path / "loss_only.png"))


def test_plot_training_curves_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="Nothing to plot"):
        plotting.plot_training_curves({"lr": [0.1, 0.2]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="Nothing to plot"):
        plotting.plot_training_curves({"loss": []}, tmp_path / "bad.png")
