"""Exporters: SavedModel for TF Serving (`saved_model.py`), TFLite for phones (`tflite.py`), CTranslate2, the fastest
CPU engine (`ctranslate2.py`), and TF Serving's directory layout (`layout.py`). Names are imported on first use
(`layout` needs no TensorFlow)."""

from keras_transformer.lazy_imports import lazy_attributes

_EXPORTS = {
    "export_saved_model": "keras_transformer.export.saved_model",
    "SavedModelTranslator": "keras_transformer.export.saved_model",
    "export_tflite": "keras_transformer.export.tflite",
    "TFLiteTranslator": "keras_transformer.export.tflite",
    "QUANTIZATIONS": "keras_transformer.export.tflite",
    "export_ctranslate2": "keras_transformer.export.ctranslate2",
    "CTranslate2Translator": "keras_transformer.export.ctranslate2",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS)
