"""Decoding strategies over one shared loop (`loop.py`) and one cache layout (`state.py`)."""

from keras_transformer.decoding.greedy import greedy_search
from keras_transformer.decoding.sampling import filter_logits, sample

__all__ = ["filter_logits", "greedy_search", "sample"]
