"""TFLite export: the whole greedy decode loop inside one model of builtin ops, and a runner for it.

The `.tflite` model takes `encoder_inputs` int32 `[1, src_len]` (source ids + END) and returns `output_ids` int32
`[1, max_steps]` and `scores` float32 `[1]` (the greedy sequence's log-probability). The loop keeps fixed-size buffers (token buffer and key/value cache), which is what lets it
convert to TFLite builtins; tokenization stays outside (the SentencePiece op is not a TFLite builtin), so the
tokenizers are written next to the model under the model's own name: `<name>.tflite`, `<name>.source.model`,
`<name>.target.model` and `<name>.json` (config, quantization and the tokenizers' fingerprints, checked on load).
Two exports into one folder therefore never share or overwrite each other's tokenizers.

Conversion goes through a Keras `ExportArchive` SavedModel: converting straight from a concrete function can
silently drop the weights (a tiny file that outputs NaN). `export_tflite` checks the result against the Keras
model before it writes anything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

QUANTIZATIONS = ("none", "float16", "dynamic")


def convert(translator, quantize="none"):
    """The `.tflite` flatbuffer (bytes) of the translator's greedy decoder."""
    import keras
    import tensorflow as tf

    from keras_transformer.decoding import greedy_search

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}.")
    model = translator.model.with_dtype("float32")  # exports do not depend on the training precision
    config, max_steps = translator.config, translator.max_output_length

    placeholder_ids = translator.preprocessor.placeholder_ids

    def translate(encoder_inputs):
        output_ids, scores = greedy_search(model, config, encoder_inputs, max_steps, placeholder_ids=placeholder_ids)
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


def sidecar_paths(path) -> dict:
    """The files that travel with `<name>.tflite`: its tokenizers and its config, named after the model."""
    path = Path(path)
    stem = path.with_suffix("")
    return {"source": Path(f"{stem}.source.model"), "target": Path(f"{stem}.target.model"), "config": Path(f"{stem}.json")}


def export_tflite(translator, path, quantize="none", check_sentences=None) -> Path:
    """Writes `path` (a `.tflite` file) plus `<name>.source.model`, `<name>.target.model` and `<name>.json` beside it.

    Before anything is written, the converted model translates `check_sentences` (default: two short probes) and
    must give finite, valid ids; for `quantize="none"` they must equal the Keras greedy output exactly. Every file is
    written through a temporary name, the model file last."""
    from keras_transformer.files import atomic_write, atomic_write_json

    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"The TFLite model path must end in .tflite, got {path}.")
    flatbuffer = convert(translator, quantize)
    runner = TFLiteTranslator(flatbuffer, translator.preprocessor)
    probes = check_sentences or ["파일을 열 수 없습니다", "설정"]
    ids = [runner.translate_ids(x) for x in translator.encode_sources(probes)]
    if not all(np.all((row >= 0) & (row < translator.config.tgt_vocab_size)) for row in ids):
        raise RuntimeError("The converted TFLite model produced invalid ids: the conversion is broken, nothing was written.")
    if quantize == "none":
        expected = translator.translate(probes)
        got = runner.translate(probes)
        if got != expected:
            raise RuntimeError(
                f"The float32 TFLite model disagrees with the Keras model ({got} vs {expected}): the conversion lost "
                "something (often the weights); nothing was written."
            )
    sidecars = sidecar_paths(path)
    atomic_write(sidecars["source"], translator.source_tokenizer.model_proto)
    atomic_write(sidecars["target"], translator.target_tokenizer.model_proto)
    atomic_write_json(sidecars["config"], {
        "model": translator.config.to_dict(),
        "quantize": quantize,
        "tokenizer_fingerprints": {"source": translator.source_tokenizer.fingerprint, "target": translator.target_tokenizer.fingerprint},
    })  # fmt: skip
    atomic_write(path, flatbuffer)
    return path


class TFLiteTranslator:
    """Runs an exported `.tflite` translator with `ai_edge_litert`'s interpreter (tokenizers from the files named
    after it). Sentences are decoded one at a time (the model's batch is 1).

    Example:
    >>> TFLiteTranslator.load("exports/translator.tflite").translate(["설정"])  # doctest: +SKIP
    """

    def __init__(self, model_content, preprocessor):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=bytes(model_content))
        self.runner = self.interpreter.get_signature_runner("translate")
        self.preprocessor = preprocessor

    @classmethod
    def load(cls, path) -> "TFLiteTranslator":
        import json

        from keras_transformer.data.tokenizer import SubwordTokenizer
        from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor

        path = Path(path)
        sidecars = sidecar_paths(path)
        missing = [p.name for p in (path, *sidecars.values()) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"Cannot load the TFLite translator {path}: missing {', '.join(missing)}. Export it with "
                "`keras-transformer export --format tflite`, which writes the tokenizers beside the model under its name."
            )
        config = json.loads(sidecars["config"].read_text(encoding="utf-8"))
        tokenizers = {side: SubwordTokenizer.load(sidecars[side]) for side in ("source", "target")}
        for side, tokenizer in tokenizers.items():
            expected = config.get("tokenizer_fingerprints", {}).get(side)
            if expected != tokenizer.fingerprint:
                raise ValueError(
                    f"{sidecars[side]} is not the {side} tokenizer {path.name} was exported with (fingerprint "
                    f"{tokenizer.fingerprint}, expected {expected}). Export the model again."
                )
        preprocessor = TransformerSeq2SeqLMPreprocessor(tokenizers["source"], tokenizers["target"], max_length=config["model"]["max_length"])
        return cls(path.read_bytes(), preprocessor)

    def translate_ids(self, encoder_ids, return_scores=False):
        """One source's ids (END included) -> the output ids (numpy, END then padding), and the score if asked."""
        ids = np.asarray(encoder_ids, dtype=np.int32)[None, :]
        result = self.runner(encoder_inputs=ids)
        return (result["output_ids"][0], float(result["scores"][0])) if return_scores else result["output_ids"][0]

    def translate(self, texts):
        """Placeholders protected and put back in Python, decoding (placeholder mask included) in the model."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        decode = self.preprocessor.target_tokenizer.decode
        encoded, placeholders = self.preprocessor.encode_sources(texts, return_placeholders=True)
        outputs = self.preprocessor.restore([decode(self.translate_ids(ids).tolist()) for ids in encoded], placeholders)
        return outputs[0] if single else outputs
