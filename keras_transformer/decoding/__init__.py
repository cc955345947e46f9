"""Decoding strategies over one shared loop (`loop.py`) and one cache layout (`state.py`)."""

from keras_transformer.decoding.beam_search import beam_search, length_penalty
from keras_transformer.decoding.greedy import greedy_search
from keras_transformer.decoding.sampling import filter_logits, sample

__all__ = ["beam_search", "filter_logits", "greedy_search", "length_penalty", "sample"]
