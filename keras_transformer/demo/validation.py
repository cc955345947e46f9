"""Checks of the JSON bodies the page sends, before anything reaches the model.

Each bad field is answered with a `DemoInputError` (HTTP 400, `{"error": "..."}`) whose message names the field,
the value and what is allowed, so a student who edits a request by hand sees what to change.
"""

from __future__ import annotations

import math

STRATEGIES = ("greedy", "beam", "sample")
MAX_TEXT_CHARS = 1000
MAX_SEED = 2**31 - 1

# name -> (type, lowest, highest, lowest excluded, default). The ranges are those the decoders accept, with
# beam_size capped so that one request cannot keep the (shared, single) model thread busy for long.
OPTION_SPECS = {
    "beam_size": (int, 1, 16, False, 4),
    "alpha": (float, 0.0, 5.0, False, 0.6),
    "temperature": (float, 0.0, 10.0, True, 1.0),
    "top_k": (int, 0, None, False, 0),
    "top_p": (float, 0.0, 1.0, True, 1.0),
    "seed": (int, 0, MAX_SEED, False, 0),
}
STRATEGY_OPTIONS = {"greedy": (), "beam": ("beam_size", "alpha"), "sample": ("temperature", "top_k", "top_p", "seed")}


class DemoInputError(ValueError):
    """Bad input from the client: answered as `{"error": message}` with HTTP `status`."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = int(status)


def parse_translate_request(body, target_vocab_size=None):
    """`{"text", "strategy", ...options}` -> `(text, strategy, options)`; options not given take their defaults.
    Options that belong to another strategy are refused rather than silently ignored."""
    body = _object(body)
    strategy = body.get("strategy", "greedy")
    if strategy not in STRATEGIES:
        raise DemoInputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")
    allowed = STRATEGY_OPTIONS[strategy]
    _refuse_unknown(body, ("text", "strategy") + allowed, f"strategy {strategy!r}")
    text = _text(body, "text")
    options = {name: _option(body, name) for name in allowed}
    if "top_k" in options and target_vocab_size is not None and options["top_k"] > target_vocab_size:
        raise DemoInputError(f"top_k must be at most the target vocabulary size {target_vocab_size}, got {options['top_k']}.")
    return text, strategy, options


def parse_attention_request(body):
    """`{"source", "target"}` -> `(source, target)`; the target may be empty (a translation of just </s>)."""
    body = _object(body)
    _refuse_unknown(body, ("source", "target"), "attention")
    return _text(body, "source"), _text(body, "target", allow_empty=True)


def _object(body):
    if not isinstance(body, dict):
        raise DemoInputError(f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def _refuse_unknown(body, allowed, what):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise DemoInputError(f"Unknown field(s) {', '.join(unknown)} for {what}; allowed: {', '.join(allowed)}.")


def _text(body, name, allow_empty=False):
    if name not in body:
        raise DemoInputError(f"Missing field {name!r}.")
    value = body[name]
    if not isinstance(value, str):
        raise DemoInputError(f"{name} must be a string, got {type(value).__name__}.")
    value = " ".join(value.split())  # the corpus was normalised to single spaces
    if not value and not allow_empty:
        raise DemoInputError(f"{name} is empty: type a sentence to translate.")
    if len(value) > MAX_TEXT_CHARS:
        raise DemoInputError(f"{name} is {len(value)} characters long; at most {MAX_TEXT_CHARS} are accepted.")
    return value


def _option(body, name):
    kind, low, high, low_excluded, default = OPTION_SPECS[name]
    value = body.get(name, default)
    # JSON has one number type; bool is an int in Python but never a sensible option value.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DemoInputError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise DemoInputError(f"{name} must be finite, got {value!r}.")
    if kind is int:
        if float(value) != int(value):
            raise DemoInputError(f"{name} must be a whole number, got {value!r}.")
        value = int(value)
    else:
        value = float(value)
    too_low = value <= low if low_excluded else value < low
    if too_low or (high is not None and value > high):
        low_bracket = "(" if low_excluded else "["
        high_text = f"{high}]" if high is not None else "inf)"
        raise DemoInputError(f"{name} must be in {low_bracket}{low}, {high_text}, got {value}.")
    return value
