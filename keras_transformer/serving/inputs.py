"""`InputValidator`: the checks every request's instances pass, whether they came as JSON (REST) or as a
TensorProto (gRPC), so that both APIs accept and refuse the same inputs with the same messages."""

from __future__ import annotations

from keras_transformer.data.special_ids import END_ID
from keras_transformer.serving.errors import ServingError

MAX_INT32 = 2**31 - 1


def type_name(value) -> str:
    """A JSON type name for error messages."""
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


class InputValidator:
    """Checks a batch (`batch`) and each of its values (`value`) for a signature; raises a 400 ServingError."""

    def __init__(self, max_instances=64, max_input_chars=1000):
        self.max_instances = int(max_instances)
        self.max_input_chars = int(max_input_chars)

    def batch(self, items, where):
        if not isinstance(items, list):
            raise ServingError(400, f"'{where}' must be a list (one entry per instance), got a {type_name(items)}.")
        self.batch_size(len(items), where)
        return items

    def batch_size(self, count, where):
        if count == 0:
            raise ServingError(400, f"'{where}' is empty: nothing to translate.")
        if count > self.max_instances:
            raise ServingError(400, f"too many instances: {count} > max_instances={self.max_instances}; split the "
                                    "request.")

    def value(self, signature, value, where):
        if signature.kind == "text":
            return self._text(signature, value, where)
        if signature.kind == "ids":
            return self._ids(signature, value, where)
        raise ServingError(400, f"signature {signature.name!r} has an input this server cannot build.")

    def _text(self, signature, value, where):
        if not isinstance(value, str):
            raise ServingError(400, f"{where}: input {signature.input_name!r} is {signature.dtype_name}: expected a "
                                    f"string, got a {type_name(value)}.")
        if len(value) > self.max_input_chars:
            raise ServingError(400, f"{where}: {len(value)} characters > max_input_chars={self.max_input_chars}.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ServingError(400, f"{where}: not valid Unicode text (lone surrogate escape).") from None
        return value

    def _ids(self, signature, value, where):
        if not isinstance(value, list):
            raise ServingError(400, f"{where}: input {signature.input_name!r} is {signature.dtype_name} "
                                    f"[batch, length]: expected a list of token ids, got a {type_name(value)}.")
        if not value:
            raise ServingError(400, f"{where}: empty list of token ids (end a source with the END id {END_ID}).")
        if len(value) > self.max_input_chars:
            raise ServingError(400, f"{where}: {len(value)} token ids > max_input_chars={self.max_input_chars}.")
        for j, token in enumerate(value):
            if type(token) is not int:
                raise ServingError(400, f"{where}[{j}]: token ids must be integers, got a {type_name(token)}.")
            if not 0 <= token <= MAX_INT32:
                raise ServingError(400, f"{where}[{j}]: token id {_short(token)} is out of range [0, {MAX_INT32}].")
        return value


def _short(number) -> str:
    """A number for a message, shortened when huge (int -> str fails beyond 4,300 digits)."""
    return str(number) if abs(number) < 10**30 else ("-" if number < 0 else "") + "a number with more than 30 digits"


__all__ = ["InputValidator", "type_name"]
