"""keras-transformer: the Transformer of "Attention Is All You Need" as readable Keras 3 code."""

__version__ = "0.1.0"

from keras_transformer import masks
from keras_transformer.config import PRESETS, TransformerConfig
from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
from keras_transformer.metrics import MaskedAccuracy
from keras_transformer.model import build_transformer
from keras_transformer.optimizers import create_optimizer
from keras_transformer.schedules import WarmupSchedule

__all__ = [
    "PRESETS",
    "MaskedAccuracy",
    "MaskedSparseCategoricalCrossentropy",
    "TransformerConfig",
    "WarmupSchedule",
    "build_transformer",
    "create_optimizer",
    "masks",
]
