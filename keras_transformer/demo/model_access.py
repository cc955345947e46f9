"""Everything the demo asks of a trained run, in one place.

The model object is being refactored, so every call into the rest of the package goes through this module and
only through these public entry points: `Translator.load`, `Translator.translate`, `Translator.translate_nbest`,
`Translator.encode_sources`, the translator's `model` and `config`, the two tokenizers' `encode` / `decode` / `id_to_piece`, `model.attention_weights`,
`schedules.WarmupSchedule`, the positional-encoding table of `layers`, and the run directory's `config.json` and
`history.json`. The web layer (`app.py`) only sees plain Python values (lists, floats, strings) that are ready to be
sent as JSON, so adapting to a changed model API means editing this file alone.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from keras_transformer.data.special_ids import END_ID

# Attention kinds in the order the page offers them: (key of `attention_weights`, what the rows are, what the
# columns are). Rows "target" are the tokens the decoder produced (its outputs, ending with </s>); columns
# "decoder_input" are what it read (<s> and the tokens before), so row i of the cross-attention is where the
# model looked while producing target token i.
ATTENTION_KINDS = (
    ("cross_attention", "target", "source"),
    ("decoder_self_attention", "target", "decoder_input"),
    ("encoder_self_attention", "source", "source"),
)

# Weights are sent with 4 decimals (ample for a colour scale) to keep the JSON small.
WEIGHT_DECIMALS = 4
SCHEDULE_POINTS = 400


class DemoModel:
    """A trained run as the demo needs it: translation, attention weights and the run's training records.

    Args:
        translator: a loaded `keras_transformer.translator.Translator`.
        run_dir: the run directory it was loaded from (for `config.json` and `history.json`).
    """

    def __init__(self, translator, run_dir):
        self.translator = translator
        self.run_dir = Path(run_dir)
        self.run_config = _read_json(self.run_dir / "config.json", default={})
        self.history = _read_json(self.run_dir / "history.json", default=[])

    @classmethod
    def load(cls, path) -> "DemoModel":
        """From a run directory, or a `.keras` file inside one (its config.json and history.json are used)."""
        from keras_transformer.translator import Translator

        path = Path(path)
        run_dir = path.parent if path.suffix == ".keras" else path  # e.g. <run>/averaged.keras
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a run directory (no {run_dir / 'config.json'}): --model takes the directory that "
                "`keras-transformer train` wrote (saved_models/<run-name>), or a .keras file inside one."
            )
        return cls(Translator.load(path), run_dir)

    # ------------------------------------------------------------------------------------------- facts
    @property
    def config(self):
        return self.translator.config

    def info(self) -> dict:
        config = self.config
        return {
            "run_name": self.run_dir.name,
            "num_layers": int(config.num_layers),
            "num_heads": int(config.num_heads),
            "d_model": int(config.d_model),
            "max_length": int(config.max_length),
            "source_vocab_size": len(self.translator.source_tokenizer.id_to_piece),
            "target_vocab_size": len(self.translator.target_tokenizer.id_to_piece),
        }

    # ------------------------------------------------------------------------------------- translation
    def translate(self, text: str, strategy: str, options: dict) -> dict:
        """One source sentence -> its hypotheses (best first) with scores and target pieces.

        `strategy` is `greedy`, `beam` (options `beam_size`, `alpha`: all `beam_size` hypotheses come back) or
        `sample` (options `temperature`, `top_k`, `top_p`, `seed`)."""
        source_ids, truncated = self._source_ids(text)
        # Naming the decoding keeps beam_size=1 a beam search instead of the automatic switch to greedy.
        hypotheses = self.translator.translate_nbest([text], decoding=strategy, **options)[0]
        return {
            "source_tokens": self._pieces(self.translator.source_tokenizer, source_ids),
            "truncated": truncated,
            "hypotheses": [
                {"text": output, "score": float(score), "tokens": self._target_pieces(output)}
                for output, score in hypotheses
            ],
        }

    # --------------------------------------------------------------------------------------- attention
    def attention(self, source: str, target: str) -> dict:
        """Encoder self-, decoder self- and cross-attention of every layer and head for one sentence pair, the
        decoder reading `<s>` + `target` (teacher forcing, as the translation was produced).

        Returns the token lists (`source`: encoder input with </s>; `target`: the decoder's outputs, the target
        pieces then </s>; `decoder_input`: <s> then the target pieces) and, per kind, `weights[layer][head][row]
        [column]` with rows and columns as in `ATTENTION_KINDS`."""
        source_ids, truncated = self._source_ids(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut source is reported as `truncated` above
            _, decoder_ids = self.translator.preprocessor.pair_ids(source, target)
        target_ids = decoder_ids[1:]
        with warnings.catch_warnings():
            # A <s>-only decoder input (empty translation) makes Keras warn about a softmax over one key: expected.
            warnings.filterwarnings("ignore", message="You are using a softmax over axis", category=UserWarning)
            weights = self.translator.model.attention_weights(
                np.asarray([source_ids], dtype="int32"), np.asarray([decoder_ids], dtype="int32")
            )
        tokens = {
            "source": self._pieces(self.translator.source_tokenizer, source_ids),
            "target": self._pieces(self.translator.target_tokenizer, target_ids + [END_ID]),
            "decoder_input": self._pieces(self.translator.target_tokenizer, decoder_ids),
        }
        kinds = {}
        for key, rows, columns in ATTENTION_KINDS:
            per_layer = [np.round(np.asarray(layer[0], dtype=np.float64), WEIGHT_DECIMALS) for layer in weights[key]]
            kinds[key] = {"rows": rows, "columns": columns, "weights": [layer.tolist() for layer in per_layer]}
        return {"tokens": tokens, "truncated": truncated, "attention": kinds}

    # ------------------------------------------------------------------------------------ run records
    def positional_encoding(self) -> dict:
        """The sinusoidal table the model adds to its embeddings: `[max_length, d_model]`."""
        from keras_transformer.layers import positional_encoding

        length, d_model = int(self.config.max_length), int(self.config.d_model)
        table = np.round(np.asarray(positional_encoding(length, d_model), dtype=np.float64), 3)
        return {"length": length, "d_model": d_model, "values": table.tolist()}

    def learning_rate(self) -> dict:
        """The run's `WarmupSchedule` over 3x its warmup (or the steps trained, if more), plus the rate that
        `history.json` recorded at the end of each epoch."""
        from keras import ops

        from keras_transformer.schedules import WarmupSchedule

        training = self.run_config.get("training") or {}
        model = self.run_config.get("model") or {}
        if "warmup_steps" not in training or "d_model" not in model:
            return {"available": False, "reason": "config.json has no training.warmup_steps / model.d_model."}
        schedule = WarmupSchedule(model["d_model"], training["warmup_steps"], training.get("lr_scale", 1.0))
        trained_steps = max([int(entry.get("step", 0)) for entry in self.history] + [0])
        last_step = max(3 * schedule.warmup_steps, trained_steps, 100)
        steps = np.unique(np.concatenate([
            np.linspace(1, last_step, SCHEDULE_POINTS).round(), [schedule.warmup_steps]
        ])).astype(np.float32)
        rates = np.asarray(ops.convert_to_numpy(schedule(steps)), dtype=np.float64).reshape(-1)
        recorded = [(entry["step"], entry["learning_rate"]) for entry in self.history
                    if "step" in entry and "learning_rate" in entry]
        return {
            "available": True,
            "d_model": schedule.d_model,
            "warmup_steps": schedule.warmup_steps,
            "scale": schedule.scale,
            "steps": steps.astype(int).tolist(),
            "rates": rates.tolist(),
            "trained_steps": trained_steps,
            "recorded_steps": [int(step) for step, _ in recorded],
            "recorded_rates": [float(rate) for _, rate in recorded],
        }

    def training_curves(self) -> dict:
        """Per-epoch values of `history.json`, grouped as the PNG plots group them (loss, accuracy, BLEU)."""
        from keras_transformer.plotting import METRIC_FAMILIES

        if not self.history:
            return {"available": False, "reason": f"{self.run_dir / 'history.json'} is missing or empty."}
        epochs = [int(entry.get("epoch", index + 1)) for index, entry in enumerate(self.history)]
        panels = []
        for title, keys in METRIC_FAMILIES:
            series = [{"name": key, "values": [_number_or_none(entry.get(key)) for entry in self.history]}
                      for key in keys if any(key in entry for entry in self.history)]
            if series:
                panels.append({"title": title, "series": series})
        return {"available": bool(panels), "reason": "" if panels else "history.json has no loss, accuracy or BLEU.",
                "epochs": epochs, "panels": panels}

    # --------------------------------------------------------------------------------------- helpers
    def _source_ids(self, text):
        """Encoder input ids (with END) and whether the sentence was cut at max_length."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut sentence is reported to the page as `truncated` instead
            ids = [int(i) for i in self.translator.encode_sources([text])[0]]
        return ids, len(self.translator.source_tokenizer.encode(text)) + 1 > len(ids)

    def _target_pieces(self, text):
        _, decoder_ids = self.translator.preprocessor.pair_ids("", text)
        return self._pieces(self.translator.target_tokenizer, decoder_ids[1:])

    @staticmethod
    def _pieces(tokenizer, ids):
        pieces = tokenizer.id_to_piece
        return [str(pieces[i]) if 0 <= i < len(pieces) else f"<{i}>" for i in ids]


def _read_json(path: Path, default):
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _number_or_none(value):
    """JSON has no NaN: missing and non-finite values become null (a gap in the chart)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
