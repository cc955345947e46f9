"""SavedModel export for TensorFlow Serving.

Layout (TF Serving's): `<export_dir>/<model_name>/<version>/` with `saved_model.pb`, `variables/` and
`assets/` (`source.model`, `target.model`, `source.vocab`, `target.vocab`). Two signatures:

- `serving_default`: `inputs` string `[batch]` -> `translations` string `[batch]`, `scores` float32 `[batch]`.
  Format placeholders are protected (tf.strings / tensorflow-text regex ops), tokenization runs in the graph
  (tensorflow-text SentencePiece op), then cached greedy decoding, detokenization and the placeholders put back.
  A loader must `import tensorflow_text` first (it registers the ops).
- `translate_ids`: `encoder_inputs` int32 `[batch, src_len]` (source ids + END, 0-padded) -> `output_ids` int32
  `[batch, max_steps]` (END then 0-padding) and `scores`; tokenization is done by the client with the
  SentencePiece models in `assets/` (`assets/config.json` gives `max_length` and the special ids).

Loading a SavedModel creates all of its resources, so a server that lacks tensorflow-text's SentencePiece ops
cannot load this export at all, `translate_ids` included. Stock TF Serving links tensorflow-text's ops; for a
server that does not, `export_saved_model(..., ids_only=True)` (`keras-transformer export --ids-only`) writes a
SavedModel with no custom op: only `translate_ids`, which is then also its `serving_default`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID, UNK_ID
from keras_transformer.decoding import greedy_search
from keras_transformer.export.layout import next_version, resolve_version_dir


class TranslatorModule(tf.Module):
    """The exported object: the float32 model, the tokenizers (unless `ids_only`) and the serving functions."""

    def __init__(self, translator, asset_dir, ids_only=False):
        super().__init__(name="keras_transformer_translator")
        self.model = translator.model.with_dtype("float32")  # exports do not depend on the training precision
        self.config = translator.config
        self.max_steps = translator.max_output_length
        self.placeholder_ids = translator.preprocessor.placeholder_ids
        self.assets = [tf.saved_model.Asset(str(path)) for path in sorted(Path(asset_dir).iterdir())]
        self.translate_ids = tf.function(
            self._translate_ids, input_signature=[tf.TensorSpec([None, None], tf.int32, name="encoder_inputs")]
        )
        if not ids_only:  # the tokenizers (and their custom ops) only come along for the strings signature
            self.preprocessor = translator.preprocessor
            self.translate = tf.function(self._translate, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

    def _translate(self, inputs):
        encoder_ids, placeholders = self.preprocessor.source_ids_and_placeholders(inputs)
        output_ids, scores = self._decode(encoder_ids.to_tensor(default_value=PAD_ID))
        translations = self.preprocessor.restore_in_graph(self.preprocessor.generate_postprocess(output_ids), placeholders)
        return {"translations": translations, "scores": scores}

    def _translate_ids(self, encoder_inputs):
        output_ids, scores = self._decode(encoder_inputs)
        return {"output_ids": output_ids, "scores": scores}

    def _decode(self, encoder_inputs):
        return greedy_search(self.model, self.config, encoder_inputs, self.max_steps, placeholder_ids=self.placeholder_ids)


def export_saved_model(translator, export_dir, model_name="translator", version=None, ids_only=False) -> Path:
    """Writes `<export_dir>/<model_name>/<version>/` (version: next free number when None) and returns it.
    With `ids_only`, the export has only the `translate_ids` signature (also as `serving_default`) and no
    custom op.

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
        (asset_dir / "config.json").write_text(json.dumps({
            "model": translator.config.to_dict(),
            "max_output_length": translator.max_output_length,
            "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "start": START_ID, "end": END_ID},
            "tokenizer_fingerprints": {"source": translator.source_tokenizer.fingerprint, "target": translator.target_tokenizer.fingerprint},
            "encoder_inputs": "source ids + END, 0-padded",
        }, indent=2))
        module = TranslatorModule(translator, asset_dir, ids_only=ids_only)
        ids_function = module.translate_ids.get_concrete_function()
        signatures = {"serving_default": ids_function if ids_only else module.translate.get_concrete_function(),
                      "translate_ids": ids_function}
        out = staging / "saved_model"
        tf.saved_model.save(module, str(out), signatures=signatures)
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

