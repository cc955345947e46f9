"""SavedModel export for TensorFlow Serving.

Layout (TF Serving's): `<export_dir>/<model_name>/<version>/` with `saved_model.pb`, `variables/` and
`assets/` (`source.model`, `target.model`, `source.vocab`, `target.vocab`). Two signatures:

- `serving_default`: `inputs` string `[batch]` -> `translations` string `[batch]`, `scores` float32 `[batch]`.
  Tokenization runs in the graph (tensorflow-text SentencePiece op), then cached greedy decoding, then
  detokenization. A loader must `import tensorflow_text` first (it registers the op).
- `translate_ids`: `encoder_inputs` int32 `[batch, src_len]` (source ids + END, 0-padded) -> `output_ids` int32
  `[batch, max_steps]` (END then 0-padding) and `scores`. No custom ops: for servers whose tensorflow-text is
  older than ours, with tokenization done by the client from the vocabularies in `assets/`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from keras_transformer.data.special_ids import END_ID, PAD_ID
from keras_transformer.decoding import greedy_search
from keras_transformer.export.common import float32_model


class TranslatorModule(tf.Module):
    """The exported object: the float32 model, both tokenizers and the two serving functions."""

    def __init__(self, translator, asset_dir):
        super().__init__(name="keras_transformer_translator")
        self.model = float32_model(translator.model, translator.config)
        self.config = translator.config
        self.max_steps = translator.max_output_length
        self.source_tokenizer = translator.source_tokenizer
        self.target_tokenizer = translator.target_tokenizer
        self.assets = [tf.saved_model.Asset(str(path)) for path in sorted(Path(asset_dir).iterdir())]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def translate(self, inputs):
        ids = self.source_tokenizer.tokenize(inputs)[:, : self.config.max_length - 1]
        end = tf.fill(tf.stack([ids.nrows(), 1]), tf.constant(END_ID, ids.dtype))
        encoder_inputs = tf.concat([ids, end], axis=1).to_tensor(default_value=PAD_ID)
        output_ids, scores = self._decode(tf.cast(encoder_inputs, tf.int32))
        return {"translations": self.target_tokenizer.detokenize(output_ids), "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="encoder_inputs")])
    def translate_ids(self, encoder_inputs):
        output_ids, scores = self._decode(encoder_inputs)
        return {"output_ids": output_ids, "scores": scores}

    def _decode(self, encoder_inputs):
        return greedy_search(self.model, self.config, encoder_inputs, self.max_steps)


def next_version(model_dir) -> int:
    """TF Serving serves the highest numeric version: the next one is 1 + the highest present."""
    versions = [int(p.name) for p in Path(model_dir).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(translator, export_dir, model_name="translator", version=None) -> Path:
    """Writes `<export_dir>/<model_name>/<version>/` (version: next free number when None) and returns it.

    The export is written to a temporary folder first and renamed into place, so a failed export never leaves a
    half-written version that TF Serving would try to load."""
    model_dir = Path(export_dir) / model_name
    version = next_version(model_dir) if version is None else int(version)
    if version <= 0:
        raise ValueError(f"version must be a positive integer (TF Serving's layout), got {version}.")
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists: choose another --version or remove it.")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        asset_dir = staging / "_assets_src"
        asset_dir.mkdir()
        translator.source_tokenizer.save(asset_dir, prefix="source")
        translator.target_tokenizer.save(asset_dir, prefix="target")
        module = TranslatorModule(translator, asset_dir)
        out = staging / "saved_model"
        tf.saved_model.save(
            module,
            str(out),
            signatures={
                "serving_default": module.translate.get_concrete_function(),
                "translate_ids": module.translate_ids.get_concrete_function(),
            },
        )
        os.replace(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class SavedModelTranslator:
    """Runs an exported SavedModel's `serving_default` signature: what TF Serving would answer.

    `path` is a version directory (`.../translator/1`) or a model directory with numeric versions (the highest is
    used, as TF Serving does)."""

    def __init__(self, path):
        import tensorflow_text  # noqa: F401  (registers the SentencePiece op the signature uses)

        path = resolve_version_dir(path)
        self.path = path
        self.signature = tf.saved_model.load(str(path)).signatures["serving_default"]

    @classmethod
    def load(cls, path):
        return cls(path)

    def translate(self, texts, batch_size=64):
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        outputs = []
        for start in range(0, len(texts), batch_size):
            result = self.signature(inputs=tf.constant(texts[start : start + batch_size]))
            outputs += [t.decode("utf-8") for t in result["translations"].numpy()]
        return outputs[0] if single else outputs


def resolve_version_dir(path) -> Path:
    """A SavedModel directory: `path` itself, or its highest numeric version subdirectory."""
    path = Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = sorted((int(p.name) for p in path.glob("*") if p.name.isdigit() and (p / "saved_model.pb").exists()))
    if not versions:
        raise FileNotFoundError(f"No SavedModel in {path}: expected saved_model.pb or numeric version folders holding one.")
    return path / str(versions[-1])
