"""Serving: TensorFlow Serving's REST API for an `export_saved_model` export, with the standard library only.

`serve(...)` blocks (the `keras-transformer serve` command); `ModelServer(...).start()` serves from a background
thread (tests, notebooks). Importing this package does not import TensorFlow.
"""

from keras_transformer.serving.server import (
    DEFAULT_SIGNATURE,
    LoadedModel,
    MicroBatcher,
    ModelServer,
    ServingError,
    add_serve_arguments,
    find_versions,
    latest_version,
    run_serve,
    serve,
)

__all__ = [
    "DEFAULT_SIGNATURE",
    "LoadedModel",
    "MicroBatcher",
    "ModelServer",
    "ServingError",
    "add_serve_arguments",
    "find_versions",
    "latest_version",
    "run_serve",
    "serve",
]
