"""`TransformerSeq2SeqLM`: the translator as a keras-hub `Seq2SeqLM` task — backbone + preprocessor, text in, text out.

It trains with `fit` on raw string pairs (through its preprocessor) or on already-tokenized batches
(`preprocessor=None`, what the bucketed main job uses), generates with this package's cached XLA decode loop, and
saves to a local keras-hub preset or a `.keras` file that holds everything needed to translate: weights,
hyperparameters and both SentencePiece models.
"""

from __future__ import annotations

import keras
import keras_hub

from keras_transformer.backbone import TransformerBackbone
from keras_transformer.decoding.decodings import resolve_decoding, decoding_from_sampler
from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerSeq2SeqLM(keras_hub.models.Seq2SeqLM):
    """An encoder-decoder Transformer for sequence-to-sequence generation (translation).

    Args:
        backbone: a `TransformerBackbone`.
        preprocessor: a `TransformerSeq2SeqLMPreprocessor` (text in, text out), or None to train on
            `({"encoder_inputs", "decoder_inputs"}, labels)` id batches.

    `compile()` defaults follow the paper: Adam (0.9, 0.98, 1e-9) with the warmup schedule, label-smoothed
    cross-entropy that ignores padding (0.1), and masked token accuracy. `compile(sampler=...)` chooses how
    `generate` decodes: `"greedy"` (default), `"beam"`, `"top_k"`, `"top_p"`, or a `keras_hub.samplers`
    `GreedySampler`, `BeamSampler(num_beams=...)`, `TopKSampler(k=...)` or `TopPSampler(p=...)`; other samplers are
    refused with a clear error.

    Example:
    >>> lm = TransformerSeq2SeqLM.from_preset("ko-en-small-preset")  # doctest: +SKIP
    >>> lm.generate(["어제 카페 갔었어 거기 사람 많더라"])  # doctest: +SKIP
    >>> lm.fit({"encoder_text": ["설정"], "decoder_text": ["Settings"]}, epochs=1)  # doctest: +SKIP
    >>> lm.save_to_preset("my_preset")  # doctest: +SKIP
    """

    backbone_cls = TransformerBackbone
    preprocessor_cls = TransformerSeq2SeqLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        # === Functional model === (the backbone already ends in float32 logits)
        inputs = backbone.input
        outputs = backbone(inputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self._translator = None

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """`keras_hub.models.Task.from_preset` for a LOCAL preset directory (nothing is downloaded). Without a `dtype`
        argument the model keeps the policy it was saved with (keras-hub's own rule cannot read a mixed policy)."""
        import json
        import os

        if "dtype" not in kwargs:
            config_path = os.path.join(str(preset), "config.json")
            if os.path.isfile(config_path):
                with open(config_path, encoding="utf-8") as handle:
                    dtype = json.load(handle).get("config", {}).get("dtype")
                if isinstance(dtype, dict):
                    kwargs["dtype"] = dtype.get("config", {}).get("name")
        return super().from_preset(preset, **kwargs)

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics=None, metrics="auto", sampler="greedy", **kwargs):
        from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
        from keras_transformer.metrics import MaskedAccuracy
        from keras_transformer.optimizers import create_optimizer

        config = self.backbone.config
        if optimizer == "auto":
            optimizer = create_optimizer(config.d_model)
        if loss == "auto":
            loss = MaskedSparseCategoricalCrossentropy(pad_id=config.pad_id, label_smoothing=0.1)
        if metrics == "auto":
            metrics = [MaskedAccuracy(pad_id=config.pad_id)]
        self.decoding, self.decoding_options = decoding_from_sampler(sampler)
        resolve_decoding(self.decoding, **self.decoding_options)
        # Skip CausalLM.compile (it would install keras-hub's own sampler); keras.Model.compile takes the rest.
        keras_hub.models.Task.compile(
            self, optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, metrics=metrics, **kwargs
        )
        self.generate_function = None

    def translator(self, **kwargs):
        """The `keras_transformer.Translator` that `generate` uses (cached XLA loop, length-sorted batches)."""
        from keras_transformer.translator import Translator

        if kwargs:
            return Translator(self, **kwargs)
        if self._translator is None:
            self._translator = Translator(self)
        return self._translator

    def generate(self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False):
        """Translates a string or a list of strings with the sampler chosen in `compile` (greedy by default).

        `max_length` caps the output length in tokens (default: the model's `max_length - 1`). Generation always
        stops at END (`stop_token_ids` other than "auto" are not supported). Returns a string or a list."""
        if self.preprocessor is None:
            raise ValueError("generate() needs a preprocessor (text in, text out); this model was built without one.")
        if stop_token_ids != "auto":
            raise ValueError("TransformerSeq2SeqLM.generate always stops at END: leave stop_token_ids='auto'.")
        decoding = getattr(self, "decoding", "greedy")
        options = getattr(self, "decoding_options", {})
        translator = self.translator(max_output_length=max_length) if max_length else self.translator()
        return translator.translate(inputs, decoding=decoding, **options)
