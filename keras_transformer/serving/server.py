"""TensorFlow Serving's REST API for the translator SavedModel, with the standard library only.

No TF Serving binary can be installed everywhere (and stock TF Serving images lack the tensorflow-text ops that
the `serving_default` signature needs), so this module serves an export of
`keras_transformer.export.export_saved_model` the way `tensorflow_model_server --rest_api_port` would:

- `GET  /v1/models/<name>[/versions/<v>]`: model status.
- `GET  /v1/models/<name>[/versions/<v>]/metadata`: the SignatureDefs (names, dtypes, shapes).
- `POST /v1/models/<name>[/versions/<v>]:predict`: row (`{"instances": [...]}`) or columnar (`{"inputs": ...}`)
  requests, optional `"signature_name"` (`serving_default`, or `translate_ids` with lists of token ids).

Like TF Serving it loads the highest numeric version under `<model_base_path>/`, answers errors as JSON
`{"error": "..."}` and batches concurrent requests: every request's instances go into one bounded queue and a
single worker thread runs them through the SavedModel in batches of up to `max_batch_size` instances, waiting at
most `batch_timeout_ms` for a batch to fill, then hands each request its slice of the outputs.

TensorFlow is imported only when a model is loaded, so importing this module (for the command line's `--help`)
stays cheap.

Example:
>>> server = ModelServer("exports/translator", port=0).start()  # doctest: +SKIP
>>> server.url  # doctest: +SKIP
'http://127.0.0.1:40321'
>>> server.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import json
import logging
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from keras_transformer.export.layout import find_versions, latest_version  # noqa: F401 (re-exported)

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

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_INT32 = 2**31 - 1


class ServingError(Exception):
    """An error answered to the client as `{"error": message}` with HTTP status `status`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)


# --------------------------------------------------------------------------------------------- model loading
def _clean_tf_message(error) -> str:
    """The useful part of a TensorFlow runtime error: no 'Detected at node' / stack-trace / node-name lines."""
    text = getattr(error, "message", None) or str(error)
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if (
            not stripped
            or stripped.startswith(("Graph execution error", "Detected at node", "<stack traces unavailable>",
                                    "[[{{node", "File \"", "Traceback"))
            or "most recent call last" in stripped
        ):
            continue
        kept.append(re.sub(r"\s*\[\[\{\{node .*$", "", stripped))
    message = " ".join(kept).replace("\\'", "'") or type(error).__name__
    message = re.sub(r"\s*\[Op:[^\]]*\]$", "", message)
    return message[:800]


def _message_to_dict(message) -> dict:
    """A proto as JSON the way TF Serving prints it: proto field names, default values included."""
    from google.protobuf import json_format

    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5 names the option differently
        return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)


class Signature:
    """One servable signature: a single input (`string [batch]` or `int [batch, length]`) and its outputs."""

    def __init__(self, name, function, input_name, input_spec, output_specs):
        self.name = name
        self.function = function
        self.input_name = input_name
        self.input_dtype = input_spec.dtype
        self.input_rank = input_spec.shape.rank
        self.output_names = sorted(output_specs)
        if self.input_dtype.name == "string" and self.input_rank == 1:
            self.kind = "text"
        elif self.input_dtype.is_integer and self.input_rank == 2:
            self.kind = "ids"
        else:
            self.kind = None  # not a kind of input this server knows how to build from JSON

    @property
    def dtype_name(self) -> str:
        return "DT_" + self.input_dtype.name.upper()


class LoadedModel:
    """One version of a SavedModel written by `export_saved_model`, ready to run.

    `run(signature_name, values)` runs a batch (a list of strings, or a list of id lists that it pads with 0)
    and returns `{output name: numpy array}`."""

    def __init__(self, model_base_path, name="translator", version=None, warmup=True):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the SentencePiece ops the serving_default graph uses

        self._tf = tf
        self.name = name
        self.base_path = Path(model_base_path)
        self.version = latest_version(self.base_path) if version is None else int(version)
        self.path = self.base_path / str(self.version)
        self.loaded_at = time.time()
        self._module = tf.saved_model.load(str(self.path))
        self.signatures = {}
        for key, function in self._module.signatures.items():
            args, kwargs = function.structured_input_signature
            if args or len(kwargs) != 1:
                logger.warning("signature %s has %d inputs; only single-input signatures are served", key, len(kwargs))
                continue
            (input_name, input_spec), = kwargs.items()
            self.signatures[key] = Signature(key, function, input_name, input_spec, function.structured_outputs)
        self.signature_defs = self._read_signature_defs()
        if warmup:
            self.warmup()

    def _read_signature_defs(self) -> dict:
        """`{signature name: SignatureDef as JSON}`, as TF Serving's metadata endpoint prints them."""
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((self.path / "saved_model.pb").read_bytes())
        defs = proto.meta_graphs[0].signature_def
        return {key: _message_to_dict(defs[key]) for key in sorted(defs)}

    def warmup(self):
        """One tiny call per signature, so that the first request does not pay for TensorFlow's first run."""
        for signature in self.signatures.values():
            if signature.kind == "text":
                self.run(signature.name, ["warmup"])
            elif signature.kind == "ids":
                self.run(signature.name, [[3]])  # END only

    def run(self, signature_name, values) -> dict:
        tf = self._tf
        signature = self.signatures[signature_name]
        if signature.kind == "text":
            tensor = tf.constant(values, dtype=tf.string)
        elif signature.kind == "ids":
            batch = np.zeros((len(values), max(len(row) for row in values)), dtype=signature.input_dtype.as_numpy_dtype)
            for row, ids in zip(batch, values):
                row[: len(ids)] = ids
            tensor = tf.constant(batch)
        else:
            raise ServingError(400, f"signature {signature_name!r} has an input this server cannot build from JSON.")
        try:
            outputs = signature.function(**{signature.input_name: tensor})
        except tf.errors.InvalidArgumentError as error:
            raise ServingError(400, f"the model rejected the input: {_clean_tf_message(error)}") from None
        except tf.errors.OpError as error:
            raise ServingError(500, f"{type(error).__name__}: {_clean_tf_message(error)}") from None
        return {name: value.numpy() for name, value in outputs.items()}


# ---------------------------------------------------------------------------------------------- batching
class _Task:
    """One request's instances for one signature, possibly split over several batches."""

    __slots__ = ("signature", "values", "n", "taken", "delivered", "results", "error", "event", "cancelled",
                 "queued_at")

    def __init__(self, signature, values):
        self.signature = signature
        self.values = values
        self.n = len(values)
        self.taken = 0  # instances already put into a batch
        self.delivered = 0  # instances whose outputs are in `results`
        self.results = None  # {output name: [value per instance]}
        self.error = None
        self.event = threading.Event()
        self.cancelled = False
        self.queued_at = time.monotonic()


class MicroBatcher:
    """A bounded queue of instances and one worker thread that runs them in batches.

    `run_batch(signature_name, values) -> {output name: array with len(values) rows}` is only ever called from
    the worker thread. A batch holds instances of one signature, taken in arrival order (a large request may be
    split over several batches); a batch runs when it reaches `max_batch_size` instances or when its oldest
    instance has waited `batch_timeout_ms`, whichever comes first. `submit` raises a 503 `ServingError` when the
    queue would hold more than `max_queue` instances. When a batch fails, its requests are re-run one by one, so that
    one bad request (e.g. token ids outside the vocabulary) does not fail the others."""

    def __init__(self, run_batch, max_batch_size=32, batch_timeout_ms=5.0, max_queue=256):
        if max_batch_size < 1 or max_queue < 1 or batch_timeout_ms < 0:
            raise ValueError("max_batch_size and max_queue must be positive and batch_timeout_ms non-negative.")
        self._run = run_batch
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout = float(batch_timeout_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._queue = collections.deque()
        self._queued = 0  # instances waiting, not yet in a batch
        self._cond = threading.Condition()
        self._closed = False
        self._paused = False
        self._sizes = collections.Counter()
        self._counts = dict(requests=0, instances=0, batches=0, rejected=0, failed_requests=0, failed_batches=0)
        self._model_seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name="keras-transformer-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side
    def submit(self, signature, values) -> _Task:
        if not values:
            raise ServingError(400, "no instances to run.")
        with self._cond:
            if self._closed:
                raise ServingError(503, "the server is shutting down.")
            if self._queued + len(values) > self.max_queue:
                self._counts["rejected"] += 1
                raise ServingError(
                    503,
                    f"the batching queue is full ({self._queued} instances waiting, {len(values)} more would exceed "
                    f"max_queue={self.max_queue}); retry later.",
                )
            task = _Task(signature, values)
            self._queue.append(task)
            self._queued += task.n
            self._counts["requests"] += 1
            self._cond.notify_all()
        return task

    def wait(self, task, timeout=None) -> dict:
        """The task's outputs `{name: list}`; raises its ServingError, or 504 after `timeout` seconds."""
        if not task.event.wait(timeout):
            self.cancel(task)
            if not task.event.is_set():  # (it may have been answered in between)
                raise ServingError(504, f"the request was not answered within {timeout:g} s.")
        if task.error is not None:
            raise task.error
        return task.results

    def run(self, signature, values, timeout=None) -> dict:
        return self.wait(self.submit(signature, values), timeout)

    def cancel(self, task):
        with self._cond:
            task.cancelled = True
            if task in self._queue:
                self._queue.remove(task)
                self._queued -= task.n - task.taken

    def pause(self):
        """Stop starting batches (requests still queue up, and get 503 once the queue is full)."""
        with self._cond:
            self._paused = True

    def resume(self):
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            stats = dict(self._counts)
            stats.update(
                queued=self._queued,
                max_batch_size=self.max_batch_size,
                largest_batch=max(self._sizes, default=0),
                mean_batch_size=stats["instances"] / stats["batches"] if stats["batches"] else 0.0,
                batch_sizes=dict(sorted(self._sizes.items())),
                model_seconds=self._model_seconds,
            )
        return stats

    def close(self, timeout=10.0):
        """Stops the worker after the batch it is running; queued requests get 503."""
        with self._cond:
            self._closed = True
            for task in self._queue:
                self._finish(task, ServingError(503, "the server is shutting down."))
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _available(self, signature) -> int:
        count = 0
        for task in self._queue:
            if task.signature == signature:
                count += task.n - task.taken
                if count >= self.max_batch_size:
                    break
        return count

    def _take(self, signature) -> list:
        """Removes up to max_batch_size queued instances of `signature`: [(task, start, stop)]."""
        segments, space, keep = [], self.max_batch_size, collections.deque()
        for task in self._queue:
            if space and task.signature == signature:
                count = min(space, task.n - task.taken)
                segments.append((task, task.taken, task.taken + count))
                task.taken += count
                space -= count
                self._queued -= count
            if task.taken < task.n:
                keep.append(task)
        self._queue = keep
        return segments

    def _loop(self):
        while True:
            with self._cond:
                while not self._closed and (self._paused or not self._queue):
                    self._cond.wait()
                if self._closed:
                    return
                signature = self._queue[0].signature
                # As TF Serving's batch_timeout_micros: counted from when the batch's first instance arrived.
                deadline = self._queue[0].queued_at + self.batch_timeout
                while not self._closed and self._queue and self._available(signature) < self.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return
                segments = self._take(signature)
            if segments:
                try:
                    self._execute(signature, segments)
                except Exception as error:  # noqa: BLE001 - never let the worker die
                    logger.exception("batch failed")
                    for task, _, _ in segments:
                        self._fail(task, ServingError(500, f"internal error: {type(error).__name__}"))

    def _execute(self, signature, segments):
        values = [value for task, start, stop in segments for value in task.values[start:stop]]
        begin = time.perf_counter()
        try:
            outputs = self._run(signature, values)
        except Exception as error:  # noqa: BLE001 - sorted out below
            if len(segments) > 1:  # find the request(s) at fault: re-run each alone
                with self._cond:
                    self._counts["failed_batches"] += 1
                for segment in segments:
                    if segment[0].error is None:
                        self._execute(signature, [segment])
                return
            if isinstance(error, ServingError):
                failure = error
            else:
                logger.error("model run failed: %s: %s", type(error).__name__, error)
                failure = ServingError(500, f"internal error while running the model: {type(error).__name__}")
            self._fail(segments[0][0], failure)
            return
        elapsed = time.perf_counter() - begin
        with self._cond:
            self._counts["batches"] += 1
            self._counts["instances"] += len(values)
            self._sizes[len(values)] += 1
            self._model_seconds += elapsed
            offset = 0
            for task, start, stop in segments:
                count = stop - start
                if task.error is None and not task.cancelled:
                    if task.results is None:
                        task.results = {name: [None] * task.n for name in outputs}
                    for name, array in outputs.items():
                        task.results[name][start:stop] = list(array[offset : offset + count])
                    task.delivered += count
                    if task.delivered == task.n:
                        task.event.set()
                offset += count

    def _fail(self, task, error):
        with self._cond:
            self._counts["failed_requests"] += 1
            if task in self._queue:  # its other instances need not run
                self._queue.remove(task)
                self._queued -= task.n - task.taken
            self._finish(task, error)

    @staticmethod
    def _finish(task, error):
        if task.error is None:
            task.error = error
        task.event.set()


# ------------------------------------------------------------------------------------ request parsing
def _type_name(value) -> str:
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


class RequestParser:
    """Turns a predict request body into `(signature, values, row_format)`, or raises a 400 ServingError."""

    ALLOWED_KEYS = {"signature_name", "instances", "inputs"}

    def __init__(self, model, max_instances=64, max_input_chars=1000):
        self.model = model
        self.max_instances = int(max_instances)
        self.max_input_chars = int(max_input_chars)

    def parse(self, body):
        if not isinstance(body, dict):
            raise ServingError(400, f"the request body must be a JSON object, got a {_type_name(body)}.")
        unknown = sorted(set(body) - self.ALLOWED_KEYS)
        if unknown:
            raise ServingError(
                400, f"unknown key(s) {', '.join(map(repr, unknown))} in the request; allowed: 'signature_name', "
                "'instances' (row format) or 'inputs' (columnar format)."
            )
        name = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(name, str):
            raise ServingError(400, f"'signature_name' must be a string, got a {_type_name(name)}.")
        signature = self.model.signatures.get(name)
        if signature is None:
            raise ServingError(
                400, f"Serving signature name: \"{name}\" not found in signature def; available: "
                f"{', '.join(sorted(self.model.signatures))}."
            )
        if "instances" in body and "inputs" in body:
            raise ServingError(400, "the request must have either 'instances' (row format) or 'inputs' "
                                    "(columnar format), not both.")
        if "instances" in body:
            return signature, self._rows(signature, body["instances"]), True
        if "inputs" in body:
            return signature, self._columns(signature, body["inputs"]), False
        raise ServingError(400, "missing 'instances' (row format) or 'inputs' (columnar format) in the request.")

    def _rows(self, signature, instances):
        items = self._batch(instances, "instances")
        if any(isinstance(item, dict) for item in items):
            unwrapped = []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ServingError(400, f"instances[{i}]: mixes objects and plain values; use one form.")
                unwrapped.append(self._named(signature, item, f"instances[{i}]"))
            items = unwrapped
        return [self._value(signature, item, f"instances[{i}]") for i, item in enumerate(items)]

    def _columns(self, signature, inputs):
        if isinstance(inputs, dict):
            inputs = self._named(signature, inputs, "inputs")
        items = self._batch(inputs, "inputs")
        return [self._value(signature, item, f"inputs[{i}]") for i, item in enumerate(items)]

    def _named(self, signature, mapping, where):
        if set(mapping) != {signature.input_name}:
            raise ServingError(
                400, f"{where}: signature {signature.name!r} has exactly one input, {signature.input_name!r}; got "
                f"key(s) {', '.join(map(repr, sorted(mapping))) or 'none'}."
            )
        return mapping[signature.input_name]

    def _batch(self, items, where):
        if not isinstance(items, list):
            raise ServingError(400, f"'{where}' must be a list (one entry per instance), got a {_type_name(items)}.")
        if not items:
            raise ServingError(400, f"'{where}' is empty: nothing to translate.")
        if len(items) > self.max_instances:
            raise ServingError(
                400, f"too many instances: {len(items)} > max_instances={self.max_instances}; split the request."
            )
        return items

    def _value(self, signature, value, where):
        if signature.kind == "text":
            if not isinstance(value, str):
                raise ServingError(400, f"{where}: input {signature.input_name!r} is {signature.dtype_name}: "
                                        f"expected a string, got a {_type_name(value)}.")
            if len(value) > self.max_input_chars:
                raise ServingError(400, f"{where}: {len(value)} characters > max_input_chars={self.max_input_chars}.")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ServingError(400, f"{where}: not valid Unicode text (lone surrogate escape).") from None
            return value
        if signature.kind == "ids":
            if not isinstance(value, list):
                raise ServingError(400, f"{where}: input {signature.input_name!r} is {signature.dtype_name} "
                                        f"[batch, length]: expected a list of token ids, got a {_type_name(value)}.")
            if not value:
                raise ServingError(400, f"{where}: empty list of token ids (end a source with the END id 3).")
            if len(value) > self.max_input_chars:
                raise ServingError(400, f"{where}: {len(value)} token ids > max_input_chars={self.max_input_chars}.")
            for j, token in enumerate(value):
                if type(token) is not int:
                    raise ServingError(400, f"{where}[{j}]: token ids must be integers, got a {_type_name(token)}.")
                if not 0 <= token <= MAX_INT32:
                    raise ServingError(400, f"{where}[{j}]: token id {token} is out of range.")
            return value
        raise ServingError(400, f"signature {signature.name!r} has an input this server cannot build from JSON.")


def _json_value(value):
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value] if value.dtype.kind in "SOU" else value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()  # floats as Python floats: NaN/Infinity are written as TF Serving writes them
    return value


def format_outputs(results, row_format):
    """TF Serving's response: `{"predictions": [{name: value}, ...]}` for row requests (plain values for a
    single-output signature), `{"outputs": {name: [...]}}` (or `{"outputs": [...]}`) for columnar ones."""
    names = sorted(results)
    columns = {name: [_json_value(v) for v in results[name]] for name in names}
    if row_format:
        if len(names) == 1:
            return {"predictions": columns[names[0]]}
        count = len(columns[names[0]])
        return {"predictions": [{name: columns[name][i] for name in names} for i in range(count)]}
    return {"outputs": columns[names[0]] if len(names) == 1 else columns}


# ------------------------------------------------------------------------------------------ HTTP layer
_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:[A-Za-z]+)?/?$"
)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: bursts of clients must not wait for SYN retries
    app = None

    def handle_error(self, request, client_address):
        # A handler crashed outside our own error handling (e.g. the client hung up): one line, no traceback.
        error = sys.exc_info()[1]
        logger.debug("connection from %s failed: %s: %s", client_address, type(error).__name__, error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keras-transformer-serving"
    timeout = 30  # seconds an idle (keep-alive) connection may stay silent

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self):
        app = self.server.app
        try:
            body = self._read_body(app.max_body_bytes)
            status, payload, headers = app.handle(self.command, self.path, body)
        except ServingError as error:
            status, payload, headers = error.status, {"error": error.message}, {}
        except Exception as error:  # noqa: BLE001 - answered as JSON, logged without exposing it
            logger.exception("unexpected error answering %s %s", self.command, self.path)
            status, payload, headers = 500, {"error": f"internal server error ({type(error).__name__})."}, {}
        self._send_json(status, payload, headers)

    def _read_body(self, limit):
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise ServingError(411, "chunked request bodies are not supported: send a Content-Length.")
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ServingError(400, f"invalid Content-Length {length!r}.") from None
        if length > limit:
            self.close_connection = True  # the unread body must not be parsed as the next request
            if length <= 4 * limit:  # read it anyway, so that the client is not reset before it reads the 413
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(65536, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            raise ServingError(413, f"request body of {length} bytes > max_body_bytes={limit}.")
        return self.rfile.read(length)

    def _send_json(self, status, payload, headers=None, close=False):
        data = (json.dumps(payload, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if close or self.close_connection:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD" and status >= 200 and status not in (204, 304):
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        # http.server's own errors (unparsable request line, headers too large, unknown method): JSON too.
        short = self.responses.get(code, ("error",))[0]
        self._send_json(code, {"error": message or short}, close=True)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        if getattr(self.server.app, "access_log", False):
            sys.stderr.write(f"{self.address_string()} - [{self.log_date_time_string()}] {format % args}\n")


class ModelServer:
    """TF Serving's REST API for one exported translator, on a `ThreadingHTTPServer`.

    Args:
        model_base_path: `<export_dir>/<model_name>` (the folder holding numeric versions); the highest
            version is loaded.
        model_name: the name in the URLs (`/v1/models/<model_name>`).
        host, port: where to listen; port 0 picks a free port (see `.port`).
        max_batch_size: most instances per SavedModel call.
        batch_timeout_ms: longest wait for a batch to fill once its first instance is queued.
        max_queue: most instances waiting; beyond that requests get 503.
        max_input_chars: longest input string (characters), or id list for `translate_ids`.
        max_instances: most instances in one request.
        request_timeout_s: a request not answered by then gets 504.
        max_body_bytes: largest request body (413 beyond).
        access_log: log every request to stderr.
        warmup: run each signature once at load time.

    Use `start()` to serve from a background thread (tests), `serve_forever()` to block, `shutdown()` to stop;
    also a context manager.
    """

    def __init__(
        self,
        model_base_path,
        model_name="translator",
        host="127.0.0.1",
        port=8501,
        *,
        max_batch_size=32,
        batch_timeout_ms=5.0,
        max_queue=256,
        max_input_chars=1000,
        max_instances=64,
        request_timeout_s=60.0,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        access_log=False,
        warmup=True,
    ):
        for label, value in (("max_batch_size", max_batch_size), ("max_queue", max_queue),
                             ("max_input_chars", max_input_chars), ("max_instances", max_instances),
                             ("max_body_bytes", max_body_bytes)):
            if int(value) < 1:
                raise ValueError(f"{label} must be a positive integer, got {value}.")
        if batch_timeout_ms < 0 or request_timeout_s <= 0:
            raise ValueError("batch_timeout_ms must be >= 0 and request_timeout_s > 0.")
        if max_instances > max_queue:
            raise ValueError(f"max_instances={max_instances} > max_queue={max_queue}: such a request could never "
                             "be queued.")
        if not re.fullmatch(r"[^/:\s]+", model_name):
            raise ValueError(f"model_name {model_name!r} must not contain '/', ':' or spaces.")
        self.model_name = model_name
        self.model = LoadedModel(model_base_path, model_name, warmup=warmup)
        self.parser = RequestParser(self.model, max_instances=max_instances, max_input_chars=max_input_chars)
        self.batcher = MicroBatcher(self.model.run, max_batch_size, batch_timeout_ms, max_queue)
        self.request_timeout_s = float(request_timeout_s)
        self.max_body_bytes = int(max_body_bytes)
        self.access_log = access_log
        self._started = time.monotonic()
        self._serving = threading.Event()
        self._thread = None
        self._closed = False
        try:
            self.httpd = _HTTPServer((host, int(port)), _Handler)
        except OSError:
            self.batcher.close()
            raise
        self.httpd.app = self

    # ------------------------------------------------------------------ lifecycle
    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ModelServer":
        """Serves from a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name="keras-transformer-http", daemon=True)
            self._thread.start()
            self._serving.wait(10)
        return self

    def serve_forever(self):
        self._serving.set()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self._serving.clear()

    def shutdown(self, timeout=10.0):
        """Stops accepting connections, fails queued requests with 503 and stops the worker. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._serving.is_set():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.close(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()

    def stats(self) -> dict:
        """Batching counters: requests, instances, batches, mean_batch_size, largest_batch, batch_sizes
        (histogram), rejected (503), failed_requests, failed_batches, queued, model_seconds, uptime_s."""
        stats = self.batcher.stats()
        stats["uptime_s"] = time.monotonic() - self._started
        return stats

    # ------------------------------------------------------------------ requests
    def handle(self, method, path, body=b""):
        """Answers one HTTP request: `(status, JSON payload, extra headers)`; raises ServingError for errors."""
        route = _ROUTE.match(urlsplit(path).path)
        if route is None:
            raise ServingError(404, f"Malformed request: {method} {urlsplit(path).path}")
        name, version, label, action = (unquote(route["name"]), route["version"], route["label"],
                                        route["action"] or "")
        if action in ("", "/metadata"):
            allowed = "GET"
        elif action == ":predict":
            allowed = "POST"
        elif action in (":classify", ":regress"):
            raise ServingError(400, f"{action[1:]} is not supported: the signatures are predict signatures "
                                    f"({PREDICT_METHOD}); use :predict.")
        else:
            raise ServingError(404, f"Malformed request: {method} {urlsplit(path).path}")
        if method != allowed:
            return 405, {"error": f"method {method} not allowed here; use {allowed}."}, {"Allow": allowed}
        self._check_servable(name, version, label)
        if action == "":
            return 200, self.status_payload(), {}
        if action == "/metadata":
            return 200, self.metadata_payload(), {}
        return 200, self.predict(self._decode_json(body)), {}

    def _check_servable(self, name, version, label):
        if version is not None and not version.isdigit():
            raise ServingError(404, f"Malformed request: version {version!r} is not a number.")
        spec = f"Specific({name}, {int(version)})" if version is not None else f"Latest({name})"
        if label is not None:
            raise ServingError(404, f"Servable not found for request: Labeled({name}, {label}): version labels "
                                    "are not configured on this server.")
        if name != self.model_name or (version is not None and int(version) != self.model.version):
            loaded = f"{self.model_name} version {self.model.version}"
            raise ServingError(404, f"Servable not found for request: {spec} (serving {loaded}).")

    @staticmethod
    def _decode_json(body):
        if not body:
            raise ServingError(400, "empty request body: send a JSON object with 'instances' or 'inputs'.")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ServingError(400, f"the request body is not UTF-8: {error.reason} at byte {error.start}.") from None
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            detail = f"{error.msg} at line {error.lineno} column {error.colno}" if hasattr(error, "msg") else "too deep"
            raise ServingError(400, f"malformed JSON: {detail}.") from None

    def predict(self, body) -> dict:
        """A parsed predict request (dict) -> TF Serving's response dict; raises ServingError."""
        signature, values, row_format = self.parser.parse(body)
        results = self.batcher.run(signature.name, values, timeout=self.request_timeout_s)
        return format_outputs(results, row_format)

    def status_payload(self) -> dict:
        return {
            "model_version_status": [
                {"version": str(self.model.version), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    def metadata_payload(self) -> dict:
        return {
            "model_spec": {"name": self.model_name, "signature_name": "", "version": str(self.model.version)},
            "metadata": {"signature_def": {"signature_def": self.model.signature_defs}},
        }


# --------------------------------------------------------------------------------------- entry points
def serve(
    model_base_path,
    model_name="translator",
    host="127.0.0.1",
    port=8501,
    max_batch_size=32,
    batch_timeout_ms=5,
    max_queue=256,
    max_input_chars=1000,
    max_instances=64,
    block=True,
    **options,
):
    """Loads the highest version under `model_base_path` and serves TF Serving's REST API on host:port.

    With `block=True` (default) serves until Ctrl-C or SIGTERM, then shuts down cleanly and returns None; with
    `block=False` returns the started `ModelServer` (call `.shutdown()`). Other options: see `ModelServer`."""
    server = ModelServer(
        model_base_path,
        model_name,
        host,
        port,
        max_batch_size=max_batch_size,
        batch_timeout_ms=batch_timeout_ms,
        max_queue=max_queue,
        max_input_chars=max_input_chars,
        max_instances=max_instances,
        **options,
    )
    if not block:
        return server.start()
    print(
        f"Serving {model_name} version {server.model.version} ({server.model.path}) at "
        f"{server.url}/v1/models/{model_name} - signatures: {', '.join(sorted(server.model.signatures))}. "
        "Ctrl-C to stop.",
        file=sys.stderr,
        flush=True,
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Shutting down.", file=sys.stderr, flush=True)
    finally:
        server.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return None


def add_serve_arguments(parser):
    """Adds the `serve` command's flags to an argparse (sub)parser and sets `func=run_serve`."""
    parser.add_argument("--model-base-path", required=True,
                        help="folder with numeric version folders, i.e. <export_dir>/<model_name> as written by "
                             "export_saved_model (the highest version is served)")
    parser.add_argument("--model-name", default="translator", help="model name in the URLs (default translator)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501, TF Serving's)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most instances per model call (default 32)")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0,
                        help="longest wait for a batch to fill, in milliseconds (default 5)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="most instances waiting to run; more get HTTP 503 (default 256)")
    parser.add_argument("--max-input-chars", type=int, default=1000,
                        help="longest input sentence in characters (token ids for translate_ids; default 1000)")
    parser.add_argument("--max-instances", type=int, default=64, help="most instances per request (default 64)")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="seconds before an unanswered request gets HTTP 504 (default 60)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.set_defaults(func=run_serve)
    return parser


def run_serve(args):
    """The `serve` command: blocks until Ctrl-C / SIGTERM. Returns the exit status (0)."""
    serve(
        args.model_base_path,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        max_instances=args.max_instances,
        request_timeout_s=args.request_timeout,
        access_log=args.access_log,
    )
    return 0
