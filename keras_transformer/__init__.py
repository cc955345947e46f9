"""keras-transformer: the Transformer of "Attention Is All You Need" as readable Keras 3 code.

The model is a keras-hub model: `TransformerBackbone` (the paper's network, from our own layers),
`TransformerSeq2SeqLMPreprocessor` (text to ids), `TransformerSeq2SeqLM` (the task: fit, generate, presets).

The public names below are imported on first use, so that `import keras_transformer` (and the command line's
`--help`) does not pay TensorFlow's start-up cost until something needs it. To load a saved `.keras` model,
use `keras_transformer.load_model(path)`: it registers this package's classes before Keras reads the file.
"""

import importlib

from keras_transformer.lazy_imports import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "keras_transformer.config",
    "TransformerConfig": "keras_transformer.config",
    "MaskedSparseCategoricalCrossentropy": "keras_transformer.losses",
    "MaskedAccuracy": "keras_transformer.metrics",
    "build_transformer": "keras_transformer.model",
    "TransformerBackbone": "keras_transformer.backbone",
    "TransformerSeq2SeqLM": "keras_transformer.seq_2_seq_lm",
    "TransformerSeq2SeqLMPreprocessor": "keras_transformer.preprocessor",
    "SubwordTokenizer": "keras_transformer.data.tokenizer",
    "create_optimizer": "keras_transformer.optimizers",
    "FusedAdam": "keras_transformer.optimizers",
    "WarmupSchedule": "keras_transformer.schedules",
    "Translator": "keras_transformer.translator",
    "TrainingConfig": "keras_transformer.config",
    "train": "keras_transformer.training",
}
_SUBMODULES = {"backbone", "config", "data", "decoding", "evaluation", "files", "layers", "losses", "masks", "metrics",
               "model", "optimizers", "plotting", "preprocessor", "run_directory", "schedules", "seq_2_seq_lm", "training",
               "translator"}

__all__ = sorted(_EXPORTS) + ["load_model"]


def load_model(path, compile=False):
    """`keras.models.load_model` for models of this package (registers its layers first)."""
    import keras

    importlib.import_module("keras_transformer.seq_2_seq_lm")  # registers the task, backbone, preprocessor, tokenizer, layers
    for module in ("keras_transformer.losses", "keras_transformer.metrics", "keras_transformer.schedules"):
        importlib.import_module(module)
    return keras.models.load_model(path, compile=compile)


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, _SUBMODULES)
