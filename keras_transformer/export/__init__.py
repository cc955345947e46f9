"""Exporters: SavedModel for TF Serving (`saved_model.py`), TFLite for phones (`tflite.py`), and TF Serving's
directory layout (`layout.py`). Names are imported on first use (`layout` needs no TensorFlow)."""

import importlib

_EXPORTS = {
    "export_saved_model": "keras_transformer.export.saved_model",
    "SavedModelTranslator": "keras_transformer.export.saved_model",
    "export_tflite": "keras_transformer.export.tflite",
    "TFLiteTranslator": "keras_transformer.export.tflite",
    "QUANTIZATIONS": "keras_transformer.export.tflite",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keras_transformer.export' has no attribute {name!r}")
