"""Exporters: SavedModel for TF Serving, TFLite for phones."""

from keras_transformer.export.saved_model import export_saved_model
from keras_transformer.export.tflite import QUANTIZATIONS, TFLiteTranslator, export_tflite

__all__ = ["QUANTIZATIONS", "TFLiteTranslator", "export_saved_model", "export_tflite"]
