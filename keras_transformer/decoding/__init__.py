"""Decoding over one shared loop (`loop.py`) and one cache layout (`state.py`): greedy (`greedy.py`), beam search
(`beam_search.py`) and sampling (`sampling.py`). `decodings.py` is the registry that names them and their options.

Names are imported on first use, so the command line reads the registry without importing TensorFlow.
"""

import importlib

_EXPORTS = {
    "beam_search": "keras_transformer.decoding.beam_search",
    "length_penalty": "keras_transformer.decoding.beam_search",
    "greedy_search": "keras_transformer.decoding.greedy",
    "filter_logits": "keras_transformer.decoding.sampling",
    "sample": "keras_transformer.decoding.sampling",
    "DECODINGS": "keras_transformer.decoding.decodings",
    "resolve_decoding": "keras_transformer.decoding.decodings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keras_transformer.decoding' has no attribute {name!r}")
