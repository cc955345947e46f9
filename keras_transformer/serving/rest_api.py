"""TF Serving's REST API (`http_rest_api_handler.cc`, `util/json_tensor.cc`), free of any HTTP library.

`RestApi.handle(method, path, body)` answers one request with a `Reply`; the transport (`http_server.py`)
only moves bytes. Routes:

- `GET  /v1/models/<name>[/versions/<v>]`: model status.
- `GET  /v1/models/<name>[/versions/<v>]/metadata`: the SignatureDefs.
- `POST /v1/models/<name>[/versions/<v>]:predict`: row (`{"instances": [...]}`) or columnar (`{"inputs": ...}`)
  requests, optional `"signature_name"`.
- `GET  /monitoring/prometheus/metrics`: Prometheus metrics (TF Serving's path).

Errors are `{"error": "..."}` with the HTTP status of a `ServingError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from urllib.parse import unquote, urlsplit

import numpy as np

from keras_transformer.serving.errors import ServingError
from keras_transformer.serving.inputs import type_name
from keras_transformer.serving.loaded_model import DEFAULT_SIGNATURE, PREDICT_METHOD

METRICS_PATH = "/monitoring/prometheus/metrics"
JSON = "application/json"

_ROUTE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:[A-Za-z]+)?/?"
)
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and small enough for an int64


@dataclasses.dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict = dataclasses.field(default_factory=dict)
    endpoint: str = "unknown"  # for metrics: status, metadata, predict, metrics, unknown


def encode_json(payload) -> bytes:
    """UTF-8 JSON; text that cannot be UTF-8 (a lone surrogate echoed in an error) is written \\u-escaped."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(", ", ": "))
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(payload, separators=(", ", ": ")) + "\n").encode("ascii")


def error_reply(error: ServingError, endpoint="unknown", headers=None) -> Reply:
    return Reply(error.status, encode_json({"error": error.message}), headers=headers or {}, endpoint=endpoint)


def shown(text, limit=60) -> str:
    """User text quoted for an error message, cut to `limit` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def decode_json(body: bytes):
    """The request body as a JSON value; a 400 ServingError for anything that is not UTF-8 JSON."""
    if not body:
        raise ServingError(400, "empty request body: send a JSON object with 'instances' or 'inputs'.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ServingError(400, f"the request body is not UTF-8: {error.reason} at byte {error.start}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ServingError(400, f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}.") from None
    except RecursionError:
        raise ServingError(400, "malformed JSON: nested too deeply.") from None
    except ValueError as error:  # e.g. an integer with more than 4,300 digits
        raise ServingError(400, f"malformed JSON: {error}") from None


class RequestParser:
    """A predict request body -> `(signature, values, row_format)`, or a 400 ServingError."""

    ALLOWED_KEYS = {"signature_name", "instances", "inputs"}

    def __init__(self, validator):
        self.validator = validator

    def parse(self, model, body):
        if not isinstance(body, dict):
            raise ServingError(400, f"the request body must be a JSON object, got a {type_name(body)}.")
        unknown = sorted(set(body) - self.ALLOWED_KEYS)
        if unknown:
            raise ServingError(
                400, f"unknown key(s) {', '.join(shown(k) for k in unknown[:5])} in the request; allowed: "
                "'signature_name', 'instances' (row format) or 'inputs' (columnar format)."
            )
        name = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(name, str):
            raise ServingError(400, f"'signature_name' must be a string, got a {type_name(name)}.")
        signature = model.signature(name[:200])
        if "instances" in body and "inputs" in body:
            raise ServingError(400, "the request must have either 'instances' (row format) or 'inputs' "
                                    "(columnar format), not both.")
        if "instances" in body:
            return signature, self._rows(signature, body["instances"]), True
        if "inputs" in body:
            return signature, self._columns(signature, body["inputs"]), False
        raise ServingError(400, "missing 'instances' (row format) or 'inputs' (columnar format) in the request.")

    def _rows(self, signature, instances):
        items = self.validator.batch(instances, "instances")
        if any(isinstance(item, dict) for item in items):
            unwrapped = []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ServingError(400, f"instances[{i}]: mixes objects and plain values; use one form.")
                unwrapped.append(self._named(signature, item, f"instances[{i}]"))
            items = unwrapped
        return [self.validator.value(signature, item, f"instances[{i}]") for i, item in enumerate(items)]

    def _columns(self, signature, inputs):
        if isinstance(inputs, dict):
            inputs = self._named(signature, inputs, "inputs")
        items = self.validator.batch(inputs, "inputs")
        return [self.validator.value(signature, item, f"inputs[{i}]") for i, item in enumerate(items)]

    @staticmethod
    def _named(signature, mapping, where):
        if set(mapping) != {signature.input_name}:
            raise ServingError(
                400, f"{where}: signature {signature.name!r} has exactly one input, {signature.input_name!r}; got "
                f"key(s) {', '.join(shown(k) for k in sorted(mapping)[:5]) or 'none'}."
            )
        return mapping[signature.input_name]


def _json_value(value):
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value] if value.dtype.kind in "SOU" else value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()  # floats as Python floats: NaN/Infinity are written as TF Serving writes them
    return value


def format_outputs(results, row_format) -> dict:
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


def status_payload(model) -> dict:
    return {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def metadata_payload(model) -> dict:
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": model.signature_defs_json}},
    }


class RestApi:
    """Answers REST requests from the model manager and the batcher.

    Args:
        manager: the `ModelManager` (which version answers).
        batcher: the `MicroBatcher` every predict goes through, keyed by `(model, signature name)`.
        validator: the `InputValidator` shared with the gRPC API.
        request_timeout_s: a predict not answered by then gets 504.
        metrics: the `ServingMetrics` (for the metrics endpoint).
    """

    def __init__(self, manager, batcher, validator, request_timeout_s, metrics):
        self.manager = manager
        self.batcher = batcher
        self.parser = RequestParser(validator)
        self.request_timeout_s = float(request_timeout_s)
        self.metrics = metrics

    async def handle(self, method, target, body=b"") -> Reply:
        """Answers one request; `target` is the raw request target (path and query, or an absolute URL)."""
        endpoint = "unknown"
        try:
            path = self._path(target)
            if path == METRICS_PATH:
                endpoint = "metrics"
                self._allow(method, "GET")
                return Reply(200, self.metrics.exposition(), self.metrics.content_type, endpoint=endpoint)
            route = _ROUTE.fullmatch(path)
            if route is None:
                raise ServingError(404, f"Malformed request: {method} {shown(path, 200)}")
            action = route["action"] or ""
            if action in (":classify", ":regress"):
                raise ServingError(400, f"{action[1:]} is not supported: the signatures are predict signatures "
                                        f"({PREDICT_METHOD}); use :predict.")
            endpoint = {"": "status", "/metadata": "metadata", ":predict": "predict"}.get(action)
            if endpoint is None:
                raise ServingError(404, f"Malformed request: {method} {shown(path, 200)}")
            self._allow(method, "POST" if endpoint == "predict" else "GET")
            model = self.manager.servable(route["name"], self._version(route["version"]), route["label"])
            if endpoint == "status":
                payload = status_payload(model)
            elif endpoint == "metadata":
                payload = metadata_payload(model)
            else:
                payload = await self.predict(model, decode_json(body))
            return Reply(200, encode_json(payload), endpoint=endpoint)
        except _MethodNotAllowed as error:
            return error_reply(error, endpoint, {"Allow": error.allowed})
        except ServingError as error:
            return error_reply(error, endpoint)

    async def predict(self, model, body) -> dict:
        signature, values, row_format = self.parser.parse(model, body)
        task = self.batcher.submit((model, signature.name), values)
        try:
            results = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(task.future)),
                                             self.request_timeout_s)
        except asyncio.TimeoutError:
            self.batcher.cancel(task)
            raise ServingError(504, f"the request was not answered within {self.request_timeout_s:g} s.") from None
        return format_outputs(results, row_format)

    @staticmethod
    def _path(target) -> str:
        """The decoded path of a request target (origin-form `/p?q` or absolute-form `http://host/p?q`)."""
        try:
            path = urlsplit(target).path
            return unquote(path, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise ServingError(400, "the request path is not valid percent-encoded UTF-8.") from None

    @staticmethod
    def _allow(method, allowed):
        if method != allowed:
            raise _MethodNotAllowed(allowed, method)

    @staticmethod
    def _version(text):
        if text is None:
            return None
        if not _VERSION.fullmatch(text):
            raise ServingError(404, f"Malformed request: version {shown(text)} is not a number.")
        return int(text)


class _MethodNotAllowed(ServingError):
    def __init__(self, allowed, method):
        super().__init__(405, f"method {method[:20]} not allowed here; use {allowed}.")
        self.allowed = allowed


__all__ = ["METRICS_PATH", "Reply", "RequestParser", "RestApi", "decode_json", "encode_json", "format_outputs"]
