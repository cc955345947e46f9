"""TFLite export: the whole greedy decode loop inside one model of builtin ops, and a runner for it.

The `.tflite` model takes `encoder_inputs` int32 `[1, src_len]` (source ids + END) and returns `output_ids` int32
`[1, max_steps]` and `scores` float32 `[1]` (the greedy sequence's log-probability). The loop keeps fixed-size buffers (token buffer and key/value cache), which is what lets it
convert to TFLite builtins; tokenization stays outside (the SentencePiece op is not a TFLite builtin), so the
tokenizer files are written next to the model: `<name>.tflite`, `source.model`, `target.model`, `config.json`.

Conversion goes through a Keras `ExportArchive` SavedModel: converting straight from a concrete function can
silently drop the weights (a tiny file that outputs NaN). `export_tflite` checks the result against the Keras
model before it writes anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

QUANTIZATIONS = ("none", "float16", "dynamic")


def convert(translator, quantize="none"):
    """The `.tflite` flatbuffer (bytes) of the translator's greedy decoder."""
    import keras
    import tensorflow as tf

    from keras_transformer.decoding import greedy_search
    from keras_transformer.export.common import float32_model

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}.")
    model = float32_model(translator.model, translator.config)
    config, max_steps = translator.config, translator.max_output_length

    def translate(encoder_inputs):
        output_ids, scores = greedy_search(model, config, encoder_inputs, max_steps)
        return {"output_ids": output_ids, "scores": scores}

    with tempfile.TemporaryDirectory() as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("translate", translate, input_signature=[tf.TensorSpec([1, None], tf.int32, name="encoder_inputs")])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["translate"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def export_tflite(translator, path, quantize="none", check_sentences=None) -> Path:
    """Writes `path` (a `.tflite` file) plus `source.model`, `target.model` and `config.json` beside it.

    Before anything is written, the converted model translates `check_sentences` (default: two short probes) and
    must give finite, valid ids; for `quantize="none"` they must equal the Keras greedy output exactly."""
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"The TFLite model path must end in .tflite, got {path}.")
    flatbuffer = convert(translator, quantize)
    runner = TFLiteTranslator(flatbuffer, translator.source_tokenizer, translator.target_tokenizer)
    probes = check_sentences or ["파일을 열 수 없습니다", "설정"]
    ids = [runner.translate_ids(x) for x in translator.encode_sources(probes)]
    if not all(np.all((row >= 0) & (row < translator.config.tgt_vocab_size)) for row in ids):
        raise RuntimeError("The converted TFLite model produced invalid ids: the conversion is broken, nothing was written.")
    if quantize == "none":
        expected = [translator.translate(p) for p in probes]
        got = [runner.target_tokenizer.decode(row.tolist()) for row in ids]
        if got != expected:
            raise RuntimeError(
                f"The float32 TFLite model disagrees with the Keras model ({got} vs {expected}): the conversion lost "
                "something (often the weights); nothing was written."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tflite.tmp")
    tmp.write_bytes(flatbuffer)
    translator.source_tokenizer.save(path.parent, prefix="source")
    translator.target_tokenizer.save(path.parent, prefix="target")
    (path.parent / "config.json").write_text(json.dumps({"model": translator.config.to_dict(), "quantize": quantize}, indent=2))
    os.replace(tmp, path)
    return path


class TFLiteTranslator:
    """Runs an exported `.tflite` translator with `ai_edge_litert`'s interpreter (tokenizers from the files beside
    it). Sentences are decoded one at a time (the model's batch is 1).

    Example:
    >>> TFLiteTranslator.load("exports/model.tflite").translate(["설정"])  # doctest: +SKIP
    """

    def __init__(self, model_content, source_tokenizer, target_tokenizer, max_length=None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=bytes(model_content))
        self.runner = self.interpreter.get_signature_runner("translate")
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_length = max_length

    @classmethod
    def load(cls, path) -> "TFLiteTranslator":
        from keras_transformer.data.tokenizer import SubwordTokenizer

        path = Path(path)
        missing = [p.name for p in (path, path.parent / "source.model", path.parent / "target.model") if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"Cannot load the TFLite translator {path}: missing {', '.join(missing)}. Export it with "
                "`keras-transformer export --format tflite`, which writes the tokenizers beside the model."
            )
        config_path = path.parent / "config.json"
        max_length = json.loads(config_path.read_text())["model"]["max_length"] if config_path.exists() else None
        return cls(
            path.read_bytes(),
            SubwordTokenizer.load(path.parent / "source.model"),
            SubwordTokenizer.load(path.parent / "target.model"),
            max_length=max_length,
        )

    def translate_ids(self, encoder_ids, return_scores=False):
        """One source's ids (END included) -> the output ids (numpy, END then padding), and the score if asked."""
        ids = np.asarray(encoder_ids, dtype=np.int32)[None, :]
        result = self.runner(encoder_inputs=ids)
        return (result["output_ids"][0], float(result["scores"][0])) if return_scores else result["output_ids"][0]

    def translate(self, texts):
        from keras_transformer.data.special_ids import END_ID

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        limit = (self.max_length or 10**9) - 1
        outputs = [
            self.target_tokenizer.decode(self.translate_ids(self.source_tokenizer.encode(t)[:limit] + [END_ID]).tolist())
            for t in texts
        ]
        return outputs[0] if single else outputs

