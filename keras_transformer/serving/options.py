"""`ServingOptions`: every setting of the server, its default and its command-line flag, written once.

`ModelServer`, `serve` and the `keras-transformer serve` command all take their defaults from this dataclass;
`add_serve_arguments` builds the argparse flags from its fields. Importing it does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import re

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def _field(default, flag, help, **argparse_options):  # noqa: A002 - argparse's name
    return dataclasses.field(default=default, metadata=dict(flag=flag, help=help, argparse=argparse_options))


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """Settings of `ModelServer` (see docs/serving.md, "Serve"). `validate()` runs on construction and raises a
    ValueError that names the command-line flag."""

    model_base_path: str = _field(None, "--model-base-path",
                                  "folder with numeric version folders, i.e. <export_dir>/<model_name> as written by "
                                  "export_saved_model (the newest complete version is served)", required=True)
    model_name: str = _field("translator", "--model-name", "model name in the URLs, /v1/models/NAME")
    host: str = _field("127.0.0.1", "--host", "address to listen on (0.0.0.0 to accept other machines)")
    port: int = _field(8501, "--port", "REST port (TF Serving's --rest_api_port; 0 picks a free port)", type=int)
    grpc_port: int | None = _field(None, "--grpc-port",
                                   "gRPC port for TF Serving's PredictionService and ModelService (TF Serving uses "
                                   "8500); off when not given", type=int)
    max_batch_size: int = _field(32, "--max-batch-size", "most instances per model call", type=int)
    batch_timeout_ms: float = _field(5.0, "--batch-timeout-ms",
                                     "longest wait for a batch to fill, in milliseconds (0: no batching wait)",
                                     type=float)
    max_queue: int = _field(256, "--max-queue", "most instances waiting to run; more get HTTP 503 / "
                                                "RESOURCE_EXHAUSTED", type=int)
    max_input_chars: int = _field(1000, "--max-input-chars",
                                  "longest input sentence in characters (token ids for translate_ids)", type=int)
    max_instances: int = _field(64, "--max-instances", "most instances per request", type=int)
    request_timeout_s: float = _field(60.0, "--request-timeout",
                                      "seconds before an unanswered request gets HTTP 504 / DEADLINE_EXCEEDED",
                                      type=float)
    max_body_bytes: int = _field(DEFAULT_MAX_BODY_BYTES, "--max-body-bytes",
                                 "largest request body (HTTP 413 beyond) and gRPC message", type=int)
    header_timeout_s: float = _field(10.0, "--header-timeout",
                                     "seconds a connection may take to send a request's headers; also how long an "
                                     "idle keep-alive connection stays open", type=float)
    body_timeout_s: float = _field(30.0, "--body-timeout", "seconds a client may take to send a request body",
                                   type=float)
    max_connections: int = _field(2048, "--max-connections",
                                  "most open HTTP connections; beyond that new ones get HTTP 503 and are closed",
                                  type=int)
    grpc_workers: int = _field(16, "--grpc-workers", "threads answering gRPC calls (more calls wait)", type=int)
    file_system_poll_wait_seconds: float = _field(
        1.0, "--file-system-poll-wait-seconds",
        "how often to look for a new version under --model-base-path (TF Serving's flag); 0 turns polling off",
        type=float)
    shutdown_grace_s: float = _field(30.0, "--shutdown-grace",
                                     "on SIGTERM, seconds to finish the requests already received", type=float)
    access_log: bool = _field(False, "--access-log", "log every request to stderr", action="store_true")
    warmup: bool = True  # run each signature once at load time (not a flag: only tests turn it off)

    def __post_init__(self):
        self.validate()

    def validate(self):
        if self.model_base_path is None or not str(self.model_base_path):
            raise ValueError("--model-base-path is required.")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", str(self.model_name)):
            raise ValueError(f"--model-name {self.model_name!r} must be 1 to 128 of A-Z a-z 0-9 . _ -.")
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value <= 65535):
                raise ValueError(f"{_flag(name)} must be a port number in [0, 65535], got {value!r}.")
        for name in ("max_batch_size", "max_queue", "max_input_chars", "max_instances", "max_body_bytes",
                     "max_connections", "grpc_workers"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{_flag(name)} must be a positive integer, got {value!r}.")
        for name in ("batch_timeout_ms", "file_system_poll_wait_seconds"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{_flag(name)} must be a finite number >= 0, got {value!r}.")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "shutdown_grace_s"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"{_flag(name)} must be a finite number > 0, got {value!r}.")
        if self.max_instances > self.max_queue:
            raise ValueError(f"--max-instances={self.max_instances} > --max-queue={self.max_queue}: such a request "
                             "could never be queued (max_instances must be <= max_queue).")
        if self.grpc_port is not None and self.grpc_port != 0 and self.grpc_port == self.port:
            raise ValueError(f"--grpc-port and --port are both {self.port}: give them different ports.")

    @classmethod
    def from_args(cls, args) -> "ServingOptions":
        """The options of a parsed `add_serve_arguments` namespace."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "flag" in f.metadata})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flag(name) -> str:
    return ServingOptions.__dataclass_fields__[name].metadata["flag"]


def add_serve_arguments(parser):
    """Adds the `serve` command's flags (one per `ServingOptions` field) to an argparse (sub)parser and sets
    `func=run_serve`. Returns the parser."""
    from keras_transformer.serving.server import run_serve  # (imports no TensorFlow either)

    for field in dataclasses.fields(ServingOptions):
        if "flag" not in field.metadata:
            continue
        options = dict(field.metadata["argparse"])
        default = field.default
        help_text = field.metadata["help"]
        if not options.get("required") and options.get("action") != "store_true" and default is not None:
            help_text += f" (default {default})"
        if options.get("action") != "store_true":
            options.setdefault("metavar", field.metadata["flag"][2:].upper().replace("-", "_"))
        parser.add_argument(field.metadata["flag"], dest=field.name, help=help_text,
                            **({} if options.get("required") else {"default": default}), **options)
    parser.set_defaults(func=run_serve)
    return parser


__all__ = ["DEFAULT_MAX_BODY_BYTES", "ServingOptions", "add_serve_arguments"]
