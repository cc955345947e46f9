"""The decoding strategies, in one registry: each name maps to its search function and the options it takes, with
their defaults. The command line (`translate`, `evaluate`), the Python API (`Translator`, `generate`) and the
keras-hub sampler names all resolve strategies here, so an option a strategy does not take is refused with one
message that names the strategy and its options.

No TensorFlow at import time: the command line builds its flags from this table.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Decoding:
    """A decoding's name, the function that runs it (`module:function` in `keras_transformer.decoding`), its options
    with their defaults, and a line of help for each option."""

    name: str
    function: str
    options: dict
    help: dict
    description: str


DECODINGS: dict[str, Decoding] = {
    "greedy": Decoding("greedy", "greedy:greedy_search", {}, {}, "the most likely token at every step"),
    "beam": Decoding(
        "beam", "beam_search:beam_search", {"beam_size": 4, "alpha": 0.6},
        {"beam_size": "beam width", "alpha": "GNMT length penalty exponent (0 = raw log-probability)"},
        "the beam_size most likely prefixes, ranked with the GNMT length penalty",
    ),
    "sample": Decoding(
        "sample", "sampling:sample", {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0},
        {"temperature": "divide the logits by this", "top_k": "sample among the k most likely tokens (0 = all)",
         "top_p": "sample within the smallest set of tokens with this probability mass (1 = all)",
         "seed": "the same seed gives the same output"},
        "random sampling with temperature, top-k and top-p filtering",
    ),
}  # fmt: skip


def resolve_decoding(name: str, **options) -> tuple[Decoding, dict]:
    """`(decoding spec, options with defaults filled in)`; ValueError for an unknown decoding or an option it does not take.
    Options given as None take the default."""
    if name not in DECODINGS:
        raise ValueError(f"Unknown decoding {name!r}; choose one of {', '.join(DECODINGS)}.")
    spec = DECODINGS[name]
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        takes = ", ".join(spec.options) if spec.options else "no options"
        raise ValueError(
            f"{name} decoding does not take {', '.join(unknown)}: it takes {takes}. "
            f"Choose the decoding that has the option ({_owners(unknown)})."
        )
    return spec, {**spec.options, **given}


def choose_decoding(decoding, options) -> tuple[str, dict]:
    """The decoding to run when the caller may leave it out: `decoding` itself when given; else beam search when a
    `beam_size` above 1 is among the options and greedy otherwise (a `beam_size` of 1 then means greedy and is
    dropped). Returns `(name, options)`; the options are checked by `resolve_decoding`."""
    options = dict(options)
    if decoding is None:
        decoding = "beam" if (options.get("beam_size") or 1) > 1 else "greedy"
        if decoding == "greedy" and options.get("beam_size") == 1:
            options.pop("beam_size")
    return decoding, options


def search_function(spec: Decoding):
    """The search function of `spec`: `(model, config, encoder_ids, max_steps, use_cache=..., **options) -> (ids, scores)`."""
    import importlib

    module, function = spec.function.split(":")
    return getattr(importlib.import_module(f"keras_transformer.decoding.{module}"), function)


def _owners(options):
    owners = sorted({spec.name for spec in DECODINGS.values() for o in options if o in spec.options})
    return "decoding " + " or ".join(owners) if owners else "no decoding takes it"


def decoding_from_sampler(sampler) -> tuple[str, dict]:
    """A keras-hub sampler name (`"greedy"`, `"beam"`, `"top_k"`, `"top_p"`) or sampler object
    (`keras_hub.samplers.GreedySampler`, `BeamSampler`, `TopKSampler`, `TopPSampler`) -> `(decoding name, options)`.
    Other samplers (contrastive, random, speculative) raise a ValueError that lists the supported ones: our decode
    loop implements these four."""
    supported = "greedy, beam, top_k, top_p (names or keras_hub.samplers objects)"
    if isinstance(sampler, str):
        names = {"greedy": ("greedy", {}), "beam": ("beam", {}), "top_k": ("sample", {"top_k": 5}), "top_p": ("sample", {"top_p": 0.1})}
        if sampler not in names:
            raise ValueError(f"Sampler {sampler!r} is not supported by TransformerSeq2SeqLM; supported: {supported}.")
        return names[sampler]
    kind = type(sampler).__name__
    temperature = float(getattr(sampler, "temperature", 1.0))
    seed = getattr(sampler, "seed", None)
    seed = {} if seed is None else {"seed": int(seed)}
    if kind == "GreedySampler":
        return "greedy", {}
    if kind == "BeamSampler":
        return "beam", {"beam_size": int(sampler.num_beams)}
    if kind == "TopKSampler":
        return "sample", {"top_k": int(sampler.k), "temperature": temperature, **seed}
    if kind == "TopPSampler":
        return "sample", {"top_p": float(sampler.p), "top_k": int(sampler.k or 0), "temperature": temperature, **seed}
    raise ValueError(f"Sampler {kind} is not supported by TransformerSeq2SeqLM; supported: {supported}.")
