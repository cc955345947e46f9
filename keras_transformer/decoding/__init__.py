"""Decoding over one shared loop (`loop.py`) and one cache layout (`state.py`): greedy (`greedy.py`), beam search
(`beam_search.py`) and sampling (`sampling.py`). `decodings.py` is the registry that names them and their options.

Names are imported on first use, so the command line reads the registry without importing TensorFlow.
"""

from keras_transformer.lazy_imports import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS)
