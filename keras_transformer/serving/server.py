"""`ModelServer`: TF Serving's REST and gRPC APIs for `export_saved_model` exports, and the `serve` command.

It stands in for `tensorflow_model_server` where that binary cannot be installed. The parts, one concern each:

- `options.py`      `ServingOptions`: every setting, its default and its flag, once.
- `model_manager.py` which version is served; polls the base path and switches versions without a failed request.
- `loaded_model.py`  one loaded SavedModel version: signatures, SignatureDefs, `run(batch)`.
- `batching.py`      `MicroBatcher`: concurrent requests' instances run together.
- `inputs.py`        the checks every instance passes, for both APIs.
- `rest_api.py`      TF Serving's REST API (routes, JSON in and out, errors), no HTTP library.
- `http_server.py`   the HTTP transport (aiohttp): framing, deadlines, body and connection limits.
- `grpc_api.py`      TF Serving's gRPC API (grpcio, tensorflow-serving-api protos).
- `metrics.py`       Prometheus metrics.

SavedModels are programs: load only trusted exports. Importing this module does not import TensorFlow.

Example:
>>> server = ModelServer("exports/translator", port=0, grpc_port=0).start()  # doctest: +SKIP
>>> server.url, server.grpc_port  # doctest: +SKIP
('http://127.0.0.1:40321', 40323)
>>> server.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time

from keras_transformer.export.layout import find_versions, latest_version  # noqa: F401 (re-exported)
from keras_transformer.serving.batching import MicroBatcher
from keras_transformer.serving.errors import ServingError
from keras_transformer.serving.options import DEFAULT_MAX_BODY_BYTES, ServingOptions, add_serve_arguments

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MicroBatcher",
    "ModelServer",
    "ServingError",
    "ServingOptions",
    "add_serve_arguments",
    "find_versions",
    "latest_version",
    "run_serve",
    "serve",
]

logger = logging.getLogger(__name__)


def _run_batch(key, values):
    """The batcher's call: a batch key is `(loaded model, signature name)`."""
    model, signature_name = key
    return model.run(signature_name, values)


class ModelServer:
    """TF Serving's REST API (and gRPC API when `grpc_port` is set) for one exported translator.

    Args:
        model_base_path, model_name, host, port and any other `ServingOptions` field as a keyword
        (`grpc_port`, `max_batch_size`, `batch_timeout_ms`, `max_queue`, `file_system_poll_wait_seconds`, ...);
        or `options=ServingOptions(...)` (keywords then override it). Defaults: `ServingOptions`.

    The constructor loads the model (FileNotFoundError, ValueError on bad settings); `start()` binds the ports
    (ValueError when one is in use) and serves from background threads; `shutdown()` stops accepting, answers
    the requests already received, then stops. Also a context manager.
    """

    def __init__(self, model_base_path=None, model_name=None, host=None, port=None, *, options=None, **settings):
        given = dict(model_base_path=model_base_path, model_name=model_name, host=host, port=port)
        settings.update({key: value for key, value in given.items() if value is not None})
        if "model_base_path" in settings:
            settings["model_base_path"] = str(settings["model_base_path"])
        self.options = dataclasses.replace(options, **settings) if options else ServingOptions(**settings)
        self.model_name = self.options.model_name
        self._closed = False
        self._started = time.monotonic()
        self._build()

    def _build(self):
        from keras_transformer.serving.http_server import HttpServer
        from keras_transformer.serving.inputs import InputValidator
        from keras_transformer.serving.metrics import ServingMetrics
        from keras_transformer.serving.model_manager import ModelManager
        from keras_transformer.serving.rest_api import RestApi

        opts = self.options
        self.metrics = ServingMetrics(opts.model_name, queue_depth=lambda: self.batcher.queued)
        self.manager = ModelManager(opts.model_base_path, opts.model_name, opts.file_system_poll_wait_seconds,
                                    warmup=opts.warmup, on_switch=self.metrics.set_version)
        self.batcher = MicroBatcher(_run_batch, opts.max_batch_size, opts.batch_timeout_ms, opts.max_queue,
                                    on_batch=self.metrics.observe_batch)
        validator = InputValidator(opts.max_instances, opts.max_input_chars)
        self.http = HttpServer(RestApi(self.manager, self.batcher, validator, opts.request_timeout_s, self.metrics),
                               opts, self.metrics)
        self.grpc = None
        if opts.grpc_port is not None:
            from keras_transformer.serving.grpc_api import GrpcApi, GrpcServer

            self.grpc = GrpcServer(GrpcApi(self.manager, self.batcher, validator, opts.request_timeout_s,
                                           self.metrics), opts)

    # ------------------------------------------------------------------ lifecycle
    @property
    def model(self):
        """The `LoadedModel` being served now."""
        return self.manager.current

    @property
    def host(self) -> str:
        return self.http.host

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def grpc_port(self):
        return None if self.grpc is None else self.grpc.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _thread(self):
        return self.http.thread

    def start(self) -> "ModelServer":
        """Binds the ports and serves from background threads; returns self."""
        try:
            for name, transport in (("REST", self.http), ("gRPC", self.grpc)):
                if transport is not None:
                    port = self.options.port if transport is self.http else self.options.grpc_port
                    try:
                        transport.start()
                    except OSError as error:
                        raise ValueError(f"cannot listen for {name} on {self.options.host}:{port}: "
                                         f"{error.strerror or error}.") from None
        except BaseException:
            self.shutdown(grace=1.0)
            raise
        return self

    def shutdown(self, grace=None):
        """Stops accepting connections and calls, lets the ones already received finish (up to `grace` s,
        default `shutdown_grace_s`), then stops the batcher and the version poller. Idempotent."""
        if self._closed:
            return
        self._closed = True
        grace = self.options.shutdown_grace_s if grace is None else grace
        grpc_done = self.grpc.stop(grace) if self.grpc is not None and self.grpc.port else None
        self.http.stop(grace)
        if grpc_done is not None:
            grpc_done.wait(grace + 1)
        self.batcher.close()
        self.manager.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()

    def stats(self) -> dict:
        """Batching counters: requests, instances, batches, mean_batch_size, largest_batch, batch_sizes
        (histogram), rejected (503), failed_requests, failed_batches, queued, model_seconds; uptime_s,
        model_version."""
        stats = self.batcher.stats()
        stats["uptime_s"] = time.monotonic() - self._started
        stats["model_version"] = self.model.version
        return stats


# --------------------------------------------------------------------------------------- entry points
def serve(model_base_path=None, block=True, **settings):
    """Loads the newest complete version under `model_base_path` and serves it (settings: `ModelServer`).

    With `block=True` serves until SIGTERM or Ctrl-C, then stops accepting, answers the requests already
    received and returns None; with `block=False` returns the started `ModelServer` (call `.shutdown()`)."""
    if not block:
        return ModelServer(model_base_path, **settings).start()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # before loading: a SIGTERM then is kept too
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    server = None
    try:
        server = ModelServer(model_base_path, **settings).start()
        model = server.model
        grpc = f", gRPC on {server.host}:{server.grpc_port}" if server.grpc is not None else ""
        print(f"Serving {server.model_name} version {model.version} ({model.path}) at {server.url}/v1/models/"
              f"{server.model_name}{grpc} - signatures: {', '.join(sorted(model.signatures))}. Ctrl-C to stop.",
              file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("Shutting down: answering the requests already received.", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return None


def run_serve(args):
    """The `serve` command: blocks until SIGTERM / Ctrl-C. Returns the exit status (0)."""
    serve(options=ServingOptions.from_args(args))
    return 0
