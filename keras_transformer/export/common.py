"""Helpers shared by the exporters."""

import keras

from keras_transformer.model import build_transformer


def float32_model(model, config):
    """The same model computing in float32 (exports should not depend on the training precision): a rebuilt
    model with the trained weights when `model` was trained under a mixed-precision policy."""
    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        copy = build_transformer(config, name=model.name)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy
