"""`ServingError`: an error answered to the client, with its HTTP status and its gRPC status code."""

from __future__ import annotations

# How TF Serving maps its error codes to HTTP (http_rest_api_handler / ToHTTPStatusCode), read backwards.
_GRPC_CODE_OF_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    411: "INVALID_ARGUMENT",
    413: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "RESOURCE_EXHAUSTED",
    504: "DEADLINE_EXCEEDED",
}


class ServingError(Exception):
    """An error answered as `{"error": message}` with HTTP status `status`, or as a gRPC status `grpc_code`
    (a `grpc.StatusCode` name; by default the one TF Serving maps to `status`)."""

    def __init__(self, status, message, grpc_code=None):
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)
        self.grpc_code = grpc_code or _GRPC_CODE_OF_HTTP_STATUS.get(self.status, "INTERNAL")


__all__ = ["ServingError"]
