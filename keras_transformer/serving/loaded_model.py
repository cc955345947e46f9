"""`LoadedModel`: one version of an `export_saved_model` SavedModel, loaded and ready to run a batch."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from keras_transformer.data.special_ids import END_ID, PAD_ID
from keras_transformer.serving.errors import ServingError

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


class Signature:
    """One servable signature: a single input, `string [batch]` ("text") or `int [batch, length]` ("ids")."""

    def __init__(self, name, function, input_name, input_spec, output_names):
        self.name = name
        self.function = function
        self.input_name = input_name
        self.input_dtype = input_spec.dtype
        self.output_names = sorted(output_names)
        rank = input_spec.shape.rank
        if self.input_dtype.name == "string" and rank == 1:
            self.kind = "text"
        elif self.input_dtype.is_integer and rank == 2:
            self.kind = "ids"
        else:
            self.kind = None  # not an input this server can build from a request

    @property
    def dtype_name(self) -> str:
        return "DT_" + self.input_dtype.name.upper()


class LoadedModel:
    """A SavedModel version: its signatures, its SignatureDefs (for metadata) and `run(signature, values)`.

    `run` takes a batch (a list of strings, or of id lists that it pads with PAD_ID) and returns
    `{output name: numpy array}`; it raises a 400 ServingError when the model rejects the input.
    Loading runs the SavedModel's code: load only trusted files."""

    def __init__(self, path, name="translator", version=None, warmup=True):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the SentencePiece ops the serving_default graph uses

        self._tf = tf
        self.path = Path(path)
        self.name = name
        self.version = int(version if version is not None else self.path.name)
        self._module = tf.saved_model.load(str(self.path))
        self.signatures = {}
        for key, function in self._module.signatures.items():
            args, kwargs = function.structured_input_signature
            if args or len(kwargs) != 1:
                logger.warning("signature %s has %d inputs; only single-input signatures are served", key, len(kwargs))
                continue
            (input_name, input_spec), = kwargs.items()
            self.signatures[key] = Signature(key, function, input_name, input_spec, function.structured_outputs)
        self.signature_def_map = self._read_signature_defs()
        self.signature_defs_json = {key: _message_to_dict(value)
                                    for key, value in sorted(self.signature_def_map.items())}
        self.loaded_at = time.time()
        if warmup:
            self.warmup()

    def __repr__(self):
        return f"LoadedModel({self.name!r}, version={self.version})"

    def _read_signature_defs(self) -> dict:
        """`{name: SignatureDef proto}` as written in `saved_model.pb` (what TF Serving's metadata returns)."""
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((self.path / "saved_model.pb").read_bytes())
        return dict(proto.meta_graphs[0].signature_def)

    def signature(self, name) -> Signature:
        """The signature called `name`; a 400 ServingError (TF Serving's wording) when there is none."""
        signature = self.signatures.get(name)
        if signature is None:
            raise ServingError(400, f"Serving signature name: \"{name}\" not found in signature def; available: "
                                    f"{', '.join(sorted(self.signatures))}.")
        return signature

    def warmup(self):
        """One tiny call per signature, so that the first request does not pay for TensorFlow's first run."""
        for signature in self.signatures.values():
            if signature.kind == "text":
                self.run(signature.name, ["warmup"])
            elif signature.kind == "ids":
                self.run(signature.name, [[END_ID]])

    def run(self, signature_name, values) -> dict:
        tf = self._tf
        signature = self.signature(signature_name)
        if signature.kind == "text":
            tensor = tf.constant(values, dtype=tf.string)
        elif signature.kind == "ids":
            batch = np.full((len(values), max(len(row) for row in values)), PAD_ID,
                            dtype=signature.input_dtype.as_numpy_dtype)
            for row, ids in zip(batch, values):
                row[: len(ids)] = ids
            tensor = tf.constant(batch)
        else:
            raise ServingError(400, f"signature {signature_name!r} has an input this server cannot build.")
        try:
            outputs = signature.function(**{signature.input_name: tensor})
        except tf.errors.InvalidArgumentError as error:
            raise ServingError(400, f"the model rejected the input: {_clean_tf_message(error)}") from None
        except tf.errors.OpError as error:
            raise ServingError(500, f"{type(error).__name__}: {_clean_tf_message(error)}") from None
        return {name: value.numpy() for name, value in outputs.items()}


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


__all__ = ["DEFAULT_SIGNATURE", "LoadedModel", "PREDICT_METHOD", "Signature"]
