"""Serving: TensorFlow Serving's REST and gRPC APIs for an `export_saved_model` export (see server.py).

`serve(...)` blocks (the `keras-transformer serve` command); `ModelServer(...).start()` serves from background
threads (tests, notebooks). Importing this package does not import TensorFlow.
"""

from keras_transformer.serving import server as _server
from keras_transformer.serving.server import *  # noqa: F401,F403 (the public names, listed once in server.__all__)

__all__ = list(_server.__all__)
