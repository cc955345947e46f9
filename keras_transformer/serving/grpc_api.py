"""TF Serving's gRPC API: `PredictionService.Predict`, `PredictionService.GetModelMetadata` and
`ModelService.GetModelStatus`, with the protos of the `tensorflow-serving-api` package, on `grpcio`.

The same model manager, batcher and input checks as the REST API; a `ServingError` becomes the gRPC status
named by its `grpc_code` (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...). The other RPCs (Classify,
Regress, MultiInference, HandleReloadConfigRequest) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from keras_transformer.serving.errors import ServingError
from keras_transformer.serving.loaded_model import DEFAULT_SIGNATURE

logger = logging.getLogger(__name__)

_DTYPES = {"text": (types_pb2.DT_STRING,), "ids": (types_pb2.DT_INT32, types_pb2.DT_INT64)}
_RANKS = {"text": "[batch]", "ids": "[batch, length]"}


def _dtype_name(dtype) -> str:
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else f"dtype {dtype}"


class GrpcApi:
    """Turns gRPC requests into batcher tasks and answers into protos; raises ServingError."""

    def __init__(self, manager, batcher, validator, request_timeout_s, metrics):
        self.manager = manager
        self.batcher = batcher
        self.validator = validator
        self.request_timeout_s = float(request_timeout_s)
        self.metrics = metrics

    def _servable(self, spec):
        version = spec.version.value if spec.HasField("version") else None
        return self.manager.servable(spec.name, version, spec.version_label or None)

    def predict(self, request, time_remaining=None):
        model = self._servable(request.model_spec)
        signature = model.signature(request.model_spec.signature_name or DEFAULT_SIGNATURE)
        names = sorted(request.inputs)
        if names != [signature.input_name]:
            raise ServingError(400, f"signature {signature.name!r} has exactly one input, {signature.input_name!r}; "
                                    f"got {', '.join(repr(n[:60]) for n in names[:5]) or 'none'}.")
        values = self._values(signature, request.inputs[signature.input_name])
        wanted = list(request.output_filter) or signature.output_names
        unknown = [name for name in wanted if name not in signature.output_names]
        if unknown:
            raise ServingError(400, f"output_filter: no output {unknown[0][:60]!r} in signature {signature.name!r}; "
                                    f"outputs: {', '.join(signature.output_names)}.")
        timeout = self.request_timeout_s if time_remaining is None else min(self.request_timeout_s, time_remaining)
        results = self.batcher.run((model, signature.name), values, timeout=max(timeout, 0.001))
        response = predict_pb2.PredictResponse()
        self._spec(response.model_spec, model, signature.name)
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(np.array(results[name])))
        return response

    def _values(self, signature, proto) -> list:
        """The instances of an input TensorProto, checked before anything is allocated for it."""
        where = f"inputs[{signature.input_name!r}]"
        if proto.dtype not in _DTYPES.get(signature.kind, ()):
            raise ServingError(400, f"{where}: expected {signature.dtype_name}, got {_dtype_name(proto.dtype)}.")
        dims = [d.size for d in proto.tensor_shape.dim]
        rank = 1 if signature.kind == "text" else 2
        if proto.tensor_shape.unknown_rank or len(dims) != rank or any(d < 0 for d in dims):
            raise ServingError(400, f"{where}: expected shape {_RANKS[signature.kind]}, got {dims[:4]}.")
        self.validator.batch_size(dims[0], where)
        if rank == 2 and dims[1] > self.validator.max_input_chars:
            raise ServingError(400, f"{where}: {dims[1]} token ids > max_input_chars="
                                    f"{self.validator.max_input_chars}.")
        try:
            array = tf.make_ndarray(proto)
        except (ValueError, TypeError) as error:
            raise ServingError(400, f"{where}: the tensor's values do not match its shape or dtype ({error}).") \
                from None
        if signature.kind == "text":
            texts = []
            for i, raw in enumerate(array.reshape(-1)):
                try:
                    texts.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise ServingError(400, f"{where}[{i}]: not UTF-8 text.") from None
            return [self.validator.value(signature, text, f"{where}[{i}]") for i, text in enumerate(texts)]
        return [self.validator.value(signature, row, f"{where}[{i}]") for i, row in enumerate(array.tolist())]

    def metadata(self, request):
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError(400, "metadata_field must be exactly ['signature_def'] (the only metadata served), "
                                    f"got {[f[:60] for f in request.metadata_field][:5]}.")
        model = self._servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._spec(response.model_spec, model)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in model.signature_def_map.items():
            signature_defs.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_defs)
        return response

    def status(self, request):
        model = self._servable(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = model.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        status.status.error_code = 0  # OK
        return response

    @staticmethod
    def _spec(spec, model, signature_name=None):
        spec.name = model.name
        spec.version.value = model.version
        if signature_name is not None:
            spec.signature_name = signature_name

    def call(self, endpoint, method, request, context):
        """Runs one RPC: its answer, or the ServingError as a gRPC status; metrics either way."""
        begin = time.perf_counter()
        code, message = "OK", ""
        try:
            if endpoint == "predict":
                return method(request, context.time_remaining())
            return method(request)
        except ServingError as error:
            code, message = error.grpc_code, error.message
        except Exception:  # noqa: BLE001 - a bug answers INTERNAL, logged once
            logger.exception("unexpected error answering gRPC %s", endpoint)
            code, message = "INTERNAL", "internal server error."
        finally:
            self.metrics.observe_request("grpc", endpoint, code, time.perf_counter() - begin)
        context.abort(getattr(grpc.StatusCode, code), message)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api):
        self.api = api

    def Predict(self, request, context):  # noqa: N802 - the proto's names
        return self.api.call("predict", self.api.predict, request, context)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return self.api.call("metadata", self.api.metadata, request, context)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api):
        self.api = api

    def GetModelStatus(self, request, context):  # noqa: N802
        return self.api.call("status", self.api.status, request, context)


class GrpcServer:
    """A `grpc.server` with the two services on `options.host:options.grpc_port` (0: a free port)."""

    def __init__(self, api, options):
        self.options = options
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(options.grpc_workers, thread_name_prefix="keras-transformer-grpc"),
            maximum_concurrent_rpcs=options.max_queue,  # beyond: RESOURCE_EXHAUSTED, before any work
            options=[
                ("grpc.max_receive_message_length", options.max_body_bytes),
                ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(api), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(api), self._server)
        self.host = options.host
        self.port = None

    def start(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            self.port = self._server.add_insecure_port(f"{host}:{self.options.grpc_port}")
        except RuntimeError as error:
            raise OSError(f"cannot listen on {self.host}:{self.options.grpc_port} ({error})") from None
        if not self.port:  # older grpcio returns 0 instead of raising
            raise OSError(f"cannot listen on {self.host}:{self.options.grpc_port}")
        self._server.start()
        return self

    def stop(self, grace):
        """Stops taking calls; calls in progress get `grace` seconds. Returns an Event set when all are done."""
        return self._server.stop(grace)


__all__ = ["GrpcApi", "GrpcServer"]
