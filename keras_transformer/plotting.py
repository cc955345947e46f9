"""Figures for looking inside the Transformer: attention maps, the positional-encoding table, the
learning-rate schedule and training curves.

Every function draws with matplotlib's Agg renderer (no pyplot, no display, no global backend switch),
writes one PNG and returns its path. Text is set in NanumGothic, shipped by the ``koreanize-matplotlib``
package, with DejaVu Sans as fallback, so Hangul tokens render as glyphs instead of empty boxes. The font
is registered with matplotlib on first use and only applied inside our own figures (``rc_context``):
``koreanize_matplotlib`` itself is never imported, since importing it rewrites the global rcParams.

Example:
>>> from keras_transformer import plotting
>>> plotting.plot_positional_encoding(64, 128, "pe.png")  # doctest: +SKIP
'pe.png'
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID, UNK_ID  # noqa: F401

KOREAN_FONT_NAME = "NanumGothic"
# NanumGothic first (Hangul and Latin); DejaVu Sans (matplotlib's own font) for what NanumGothic lacks,
# e.g. SentencePiece's word-boundary mark "▁" (U+2581).
FONT_FAMILY = [KOREAN_FONT_NAME, "DejaVu Sans"]
DEFAULT_DPI = 100

_registered_font_path: str | None = None


def korean_font_path() -> str | None:
    """Path of ``NanumGothic.ttf`` inside the installed ``koreanize_matplotlib`` package, or None when the
    package (or the file) is missing. Found with ``importlib.util.find_spec``, which locates the package
    without importing (and so without running) it."""
    try:
        spec = importlib.util.find_spec("koreanize_matplotlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "fonts", "NanumGothic.ttf")
        if os.path.isfile(candidate):
            return candidate
    return None


def _korean_font() -> dict:
    """Register NanumGothic with matplotlib (once) and return the rcParams our figures are drawn under.

    Use as ``with matplotlib.rc_context(_korean_font()): ...``; nothing global is changed beyond adding the
    font to matplotlib's font list. Without ``koreanize-matplotlib`` the figures still render, but Hangul
    falls back to DejaVu Sans (boxes, with matplotlib's "Glyph ... missing" warning)."""
    global _registered_font_path
    path = korean_font_path()
    if path is not None and _registered_font_path != path:
        font_manager.fontManager.addfont(path)
        _registered_font_path = path
    return {"font.family": list(FONT_FAMILY), "axes.unicode_minus": False}


def _new_figure(figsize) -> Figure:
    figure = Figure(figsize=figsize, dpi=DEFAULT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path, dpi=DEFAULT_DPI) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


# ------------------------------------------------------------------------------------------- attention
def plot_attention(weights, query_tokens: Sequence[str], key_tokens: Sequence[str], path, title=None, max_heads=None):
    """Attention weights of one layer for one example, one heatmap per head.

    Args:
        weights: array ``[heads, query_len, key_len]`` (a 2-D ``[query_len, key_len]`` array is taken as one
            head). Take one example out of a batch first, e.g. ``attention_weights(...)[name][layer][0]``.
        query_tokens: ``query_len`` labels, drawn on the y axis.
        key_tokens: ``key_len`` labels, drawn on the x axis (rotated 90 degrees).
        path: where to write the PNG; missing parent folders are created.
        title: optional figure title.
        max_heads: draw only the first ``max_heads`` heads.

    Returns:
        ``path`` as a string.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim == 2:
        weights = weights[None]
    if weights.ndim != 3:
        hint = " Select one example first, e.g. weights[0]." if weights.ndim == 4 else ""
        raise ValueError(f"weights must be [heads, query_len, key_len], got shape {weights.shape}.{hint}")
    query_tokens = [str(t) for t in query_tokens]
    key_tokens = [str(t) for t in key_tokens]
    num_heads, query_len, key_len = weights.shape
    if query_len != len(query_tokens) or key_len != len(key_tokens):
        raise ValueError(
            f"weights of shape {weights.shape} (heads, query_len, key_len) do not match the tokens: "
            f"{len(query_tokens)} query tokens and {len(key_tokens)} key tokens."
        )
    if num_heads == 0 or query_len == 0 or key_len == 0:
        raise ValueError(f"weights must not be empty, got shape {weights.shape}.")
    if max_heads is not None:
        if int(max_heads) <= 0:
            raise ValueError(f"max_heads must be positive, got {max_heads}.")
        num_heads = min(num_heads, int(max_heads))
        weights = weights[:num_heads]

    columns = min(num_heads, math.ceil(math.sqrt(num_heads)))
    rows = math.ceil(num_heads / columns)
    # Roughly 0.22 inch per token, at least 2.5 inches per panel.
    panel_width = max(2.5, 0.22 * key_len + 1.0)
    panel_height = max(2.5, 0.22 * query_len + 1.0)
    with matplotlib.rc_context(_korean_font()):
        figure = _new_figure((columns * panel_width + 1.0, rows * panel_height + (0.5 if title else 0.0)))
        axes = figure.subplots(rows, columns, squeeze=False)
        vmax = float(weights.max()) if float(weights.max()) > 0 else 1.0
        image = None
        for head, ax in enumerate(axes.flat):
            if head >= num_heads:
                ax.set_axis_off()
                continue
            image = ax.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
            ax.set_title(f"head {head + 1}", fontsize=9)
            ax.set_xticks(range(key_len))
            ax.set_xticklabels(key_tokens, rotation=90, fontsize=8)
            ax.set_yticks(range(query_len))
            ax.set_yticklabels(query_tokens, fontsize=8)
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
        if title:
            figure.suptitle(title)
        return _save(figure, path)


def _piece(tokenizer, token_id: int) -> str:
    pieces = tokenizer.id_to_piece
    if callable(pieces):  # e.g. a raw sentencepiece.SentencePieceProcessor
        return str(pieces(int(token_id)))
    if 0 <= token_id < len(pieces):
        return str(pieces[token_id])
    return f"<{token_id}>"


def plot_attention_for_sentence(translator, source_text, target_text, out_dir, layer=-1):
    """Encoder self-attention, decoder self-attention and cross-attention of one layer for one sentence pair.

    The ids come from the translator's preprocessor, as in training: the encoder reads the source ids followed by
    END (cut to the model's max_length), the decoder reads START followed by the target ids (just START when
    ``target_text`` is None).

    Args:
        translator: a ``keras_transformer.Translator`` (its model, config and tokenizers).
        source_text: the source sentence.
        target_text: the target sentence, or None.
        out_dir: folder for the three PNGs (created if missing).
        layer: which layer to draw; negative counts from the last (default: the last layer).

    Returns:
        The paths of the three PNGs: encoder self-attention, decoder self-attention, cross-attention.
    """
    config = translator.config
    if config.encoder_input_dim is not None:
        raise ValueError("plot_attention_for_sentence needs a model with token inputs (config.encoder_input_dim is set).")
    num_layers = int(config.num_layers)
    if not -num_layers <= int(layer) < num_layers:
        raise ValueError(f"layer must be in [{-num_layers}, {num_layers - 1}] for a {num_layers}-layer model, got {layer}.")
    layer_index = int(layer) % num_layers

    encoder_ids, decoder_ids = translator.preprocessor.pair_ids(source_text, target_text)
    source_pieces = [_piece(translator.source_tokenizer, i) for i in encoder_ids]
    target_pieces = [_piece(translator.target_tokenizer, i) for i in decoder_ids]

    with warnings.catch_warnings():
        # A START-only decoder input makes Keras warn about a softmax over one key; that is expected here.
        warnings.filterwarnings("ignore", message="You are using a softmax over axis", category=UserWarning)
        weights = translator.model.attention_weights(
            np.asarray(encoder_ids, dtype="int32")[None], np.asarray(decoder_ids, dtype="int32")[None]
        )
    layer_label = f"layer {layer_index + 1} of {num_layers}"
    panels = [
        ("encoder_self_attention", "Encoder self-attention", source_pieces, source_pieces),
        ("decoder_self_attention", "Decoder self-attention (masked)", target_pieces, target_pieces),
        ("cross_attention", "Encoder-decoder (cross) attention", target_pieces, source_pieces),
    ]
    paths = []
    for key, name, queries, keys in panels:
        path = os.path.join(os.fspath(out_dir), f"{key}_layer{layer_index + 1}.png")
        paths.append(
            plot_attention(weights[key][layer_index][0], queries, keys, path, title=f"{name}, {layer_label}")
        )
    return paths


# ---------------------------------------------------------------------------------- positional encoding
def plot_positional_encoding(length, d_model, path):
    """The sinusoidal positional-encoding table ``[length, d_model]``: positions on y, depth on x."""
    from keras_transformer.layers import positional_encoding

    table = positional_encoding(length, d_model)
    with matplotlib.rc_context(_korean_font()):
        figure = _new_figure((8, 5))
        ax = figure.add_subplot()
        image = ax.imshow(table, cmap="RdBu", vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_xlabel("depth (embedding dimension)")
        ax.set_ylabel("position")
        ax.set_title(f"Positional encoding (length={length}, d_model={d_model})")
        figure.colorbar(image, ax=ax)
        return _save(figure, path)


# ------------------------------------------------------------------------------------------ learning rate
def plot_learning_rate(schedule, num_steps, path):
    """Learning rate against training step for ``schedule`` (a ``WarmupSchedule`` or any callable
    step -> lr) over steps 1..``num_steps``, with the peak (at ``warmup_steps``) marked."""
    from keras import ops

    num_steps = int(num_steps)
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}.")
    steps = np.arange(1, num_steps + 1, dtype=np.float32)
    rates = np.asarray(ops.convert_to_numpy(schedule(steps)), dtype=np.float64).reshape(-1)
    if rates.shape != steps.shape:
        rates = np.asarray([float(ops.convert_to_numpy(schedule(step))) for step in steps])

    warmup_steps = getattr(schedule, "warmup_steps", None)
    if warmup_steps is not None and 1 <= int(warmup_steps) <= num_steps:
        peak_step = int(warmup_steps)
    else:
        peak_step = int(steps[int(np.argmax(rates))])
    peak_rate = float(rates[peak_step - 1])

    with matplotlib.rc_context(_korean_font()):
        figure = _new_figure((7, 4))
        ax = figure.add_subplot()
        ax.plot(steps, rates, label="learning rate")
        ax.axvline(peak_step, color="gray", linestyle="--", linewidth=1)
        ax.plot([peak_step], [peak_rate], "o", color="tab:red", label=f"peak {peak_rate:.3g} at step {peak_step}")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        name = type(schedule).__name__
        details = ", ".join(f"{k}={getattr(schedule, k)}" for k in ("d_model", "warmup_steps") if hasattr(schedule, k))
        ax.set_title(f"{name}({details})" if details else name)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.legend()
        return _save(figure, path)


# -------------------------------------------------------------------------------------- training curves
METRIC_FAMILIES = (
    ("Loss", ("loss", "val_loss")),
    ("Masked accuracy", ("masked_accuracy", "val_masked_accuracy")),
    ("BLEU", ("bleu", "val_bleu")),
)


def plot_training_curves(history: Mapping[str, Sequence[float]], path):
    """Training curves from a ``keras.callbacks.History.history``-like dict (a ``History`` object works too):
    one panel each for loss, masked accuracy and BLEU, epochs on x. Missing or empty keys are skipped."""
    history = getattr(history, "history", history)
    if not isinstance(history, Mapping):
        raise ValueError(f"history must be a dict of metric name -> per-epoch values, got {type(history).__name__}.")
    panels = []
    for label, keys in METRIC_FAMILIES:
        series = [(key, np.asarray(history[key], dtype=np.float64).reshape(-1)) for key in keys if key in history]
        series = [(key, values) for key, values in series if values.size]
        if series:
            panels.append((label, series))
    if not panels:
        known = ", ".join(key for _, keys in METRIC_FAMILIES for key in keys)
        raise ValueError(f"Nothing to plot: history has none of {known} (got keys {sorted(history)}).")

    with matplotlib.rc_context(_korean_font()):
        figure = _new_figure((4.5 * len(panels), 3.8))
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for ax, (label, series) in zip(axes, panels):
            for key, values in series:
                epochs = np.arange(1, values.size + 1)
                ax.plot(epochs, values, marker="o" if values.size <= 30 else None, markersize=3,
                        linestyle="--" if key.startswith("val_") else "-", label=key)
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.legend()
        return _save(figure, path)


__all__ = [
    "FONT_FAMILY",
    "korean_font_path",
    "plot_attention",
    "plot_attention_for_sentence",
    "plot_learning_rate",
    "plot_positional_encoding",
    "plot_training_curves",
]
