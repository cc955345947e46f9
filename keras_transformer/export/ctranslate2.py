"""CTranslate2 export: a `ctranslate2.specs.TransformerSpec` filled from our weights, and a runner for it.

The export is one directory that holds everything it needs and nothing another export could overwrite:

    model.bin, config.json                  CTranslate2's model (weights, optional int8/int16 quantization)
    source_vocabulary.json, target_vocabulary.json (or shared_vocabulary.json when both are the same)
    source.model, target.model              the SentencePiece models this export was made with
    keras_transformer.json                  our config, max_output_length, special ids, vocabulary fingerprints

How our model maps onto the spec:
- post-LN (`norm_first=False`) or pre-LN (`norm_first=True`, with the final encoder/decoder LayerNorm);
- embeddings are multiplied by sqrt(d_model) (`scale_embeddings`, CTranslate2's default, as `TokenEmbedding` does);
- our positional table (sines at even columns, cosines at odd ones, interleaved) is stored as the position
  encodings: CTranslate2's built-in sinusoids put all sines first, then all cosines, which would be wrong for us;
- the LayerNorm epsilon is read from the layers (CTranslate2 has one for the whole model);
- self-attention's W_Q, W_K, W_V are stacked into one matrix, cross-attention's W_K, W_V into another (the layout
  CTranslate2 reads); Keras kernels are `[in, out]`, CTranslate2 weights `[out, in]`;
- shared embeddings: the same matrix is the source and target embedding and the output projection (CTranslate2
  stores it once, as aliases);
- vocabularies are the SentencePiece pieces in id order, so ids are the same on both sides; `<unk>`, `<s>`, `</s>`
  are our UNK/START/END ids, START starts the decoder and END is appended to the source by CTranslate2
  (`add_source_eos`), exactly as `Translator.encode_sources` does.

`export_ctranslate2` checks, before it renames the folder into place, that the float32 conversion gives the Keras
greedy output on probe sentences. `CTranslate2Translator` runs an export with `ctranslate2.Translator`; importing
this module needs neither ctranslate2 nor TensorFlow (the runner needs only ctranslate2 and sentencepiece).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from keras_transformer.data.placeholders import PLACEHOLDER_TOKENS, find_placeholders, protect, restore
from keras_transformer.data.special_ids import END_ID, PAD_ID, START_ID, UNK_ID

QUANTIZATIONS = ("none", "int8", "int16")
METADATA_FILE = "keras_transformer.json"
FORMAT_NAME = "ctranslate2"
PROBE_SENTENCES = ("파일을 열 수 없습니다", "설정")
_INSTALL_HINT = "Install it with `pip install keras-transformer[ctranslate2]` (or `pip install ctranslate2`)."


def _import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as error:
        raise ImportError(f"The CTranslate2 export and runner need the ctranslate2 package. {_INSTALL_HINT}") from error
    return ctranslate2


# ---------------------------------------------------------------------------------------------- the model's layers


class _ModelParts(NamedTuple):
    """The layers of a trained model that the spec is filled from."""

    source_embedding: object  # TokenEmbedding (`.embeddings` `[src_vocab, d_model]`)
    target_embedding: object  # TokenEmbedding; the same object when embeddings are shared
    output_projection: object  # Dense `[d_model, tgt_vocab]`, or None when embeddings are shared
    encoder_layers: list  # EncoderLayer, in order
    decoder_layers: list  # DecoderLayer, in order
    encoder_norm: object  # final LayerNormalization (pre-LN), or None
    decoder_norm: object
    position_table: np.ndarray  # `[max_length, d_model]`, what PositionalEncoding adds


def _model_parts(model) -> _ModelParts:
    """The layers of a `TransformerBackbone` that the spec is filled from (the backbone keeps them as attributes)."""
    return _ModelParts(
        model.source_embedding,
        model.target_embedding,
        model.output_projection,
        list(model.encoder_layers),
        list(model.decoder_layers),
        model.encoder_norm,
        model.decoder_norm,
        model.encoder_positional_encoding.table,
    )


# ------------------------------------------------------------------------------------------------ building the spec


def _numpy(variable):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _set_linear(spec, *denses):
    """`spec` <- the Dense layers `denses` side by side (their outputs concatenated), as CTranslate2's
    `[out, in]` weight and `[out]` bias."""
    spec.weight = np.ascontiguousarray(np.concatenate([_numpy(d.kernel) for d in denses], axis=1).T)
    spec.bias = np.concatenate([_numpy(d.bias) for d in denses])


def _set_layer_norm(spec, norm):
    spec.gamma = _numpy(norm.gamma)
    spec.beta = _numpy(norm.beta)


def _set_attention(spec, attention, norm, self_attention):
    if self_attention:
        _set_linear(spec.linear[0], attention.query_dense, attention.key_dense, attention.value_dense)
    else:
        _set_linear(spec.linear[0], attention.query_dense)
        _set_linear(spec.linear[1], attention.key_dense, attention.value_dense)
    _set_linear(spec.linear[-1], attention.output_dense)
    _set_layer_norm(spec.layer_norm, norm)


def _set_feed_forward(spec, feed_forward, norm):
    _set_linear(spec.linear_0, feed_forward.inner_dense)
    _set_linear(spec.linear_1, feed_forward.output_dense)
    _set_layer_norm(spec.layer_norm, norm)


def _layer_norm_epsilon(parts):
    """The epsilon of every LayerNorm of the model; CTranslate2 has one for all of them."""
    norms = [parts.encoder_norm, parts.decoder_norm]
    for layer in parts.encoder_layers + parts.decoder_layers:
        norms += [layer.self_attention_norm, layer.feed_forward_norm, getattr(layer, "cross_attention_norm", None)]
    epsilons = {float(norm.epsilon) for norm in norms if norm is not None}
    if len(epsilons) != 1:
        raise ValueError(f"CTranslate2 uses one LayerNorm epsilon for the whole model; this model has {sorted(epsilons)}.")
    return epsilons.pop()


def _pieces(model_proto: bytes) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(bytes(model_proto))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def vocabulary_fingerprint(pieces) -> str:
    """sha256 of the pieces in id order: the same vocabulary (and id mapping) gives the same fingerprint."""
    return hashlib.sha256("\n".join(pieces).encode("utf-8")).hexdigest()


def build_spec(translator):
    """A validated `ctranslate2.specs.TransformerSpec` holding the float32 weights of `translator.model`."""
    _import_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    config = translator.config
    if config.encoder_input_dim is not None:
        raise ValueError(
            "CTranslate2 translates token ids; this model reads feature vectors (encoder_input_dim="
            f"{config.encoder_input_dim}) and cannot be exported to CTranslate2."
        )
    parts = _model_parts(translator.model)
    if parts.position_table.shape != (config.max_length, config.d_model):
        raise ValueError(f"position table of shape {parts.position_table.shape}, expected {(config.max_length, config.d_model)}.")
    for layer in parts.encoder_layers + parts.decoder_layers:
        activation = getattr(layer.feed_forward.inner_dense.activation, "__name__", "?")
        if activation != "relu":
            raise ValueError(f"{layer.name}: feed-forward activation {activation!r}; the CTranslate2 export supports relu only.")

    source_pieces = _pieces(translator.source_tokenizer.model_proto)
    target_pieces = _pieces(translator.target_tokenizer.model_proto)
    for side, pieces, size in (("source", source_pieces, config.src_vocab_size), ("target", target_pieces, config.tgt_vocab_size)):
        if len(pieces) != size:
            raise ValueError(f"The {side} tokenizer has {len(pieces)} pieces but the model's {side} vocabulary has {size} ids.")

    common = dict(num_layers=config.num_layers, num_heads=config.num_heads, pre_norm=config.norm_first,
                  activation=common_spec.Activation.RELU)
    spec = transformer_spec.TransformerSpec(
        transformer_spec.TransformerEncoderSpec(**common), transformer_spec.TransformerDecoderSpec(**common)
    )
    spec.config.layer_norm_epsilon = _layer_norm_epsilon(parts)
    spec.config.unk_token = target_pieces[UNK_ID]
    spec.config.bos_token = target_pieces[START_ID]
    spec.config.eos_token = target_pieces[END_ID]
    spec.config.decoder_start_token = target_pieces[START_ID]
    spec.config.add_source_bos = False
    spec.config.add_source_eos = True  # sources end with END, as in training
    spec.register_source_vocabulary(source_pieces)
    spec.register_target_vocabulary(target_pieces)

    table = np.ascontiguousarray(parts.position_table, dtype=np.float32)
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = _numpy(parts.source_embedding.embeddings)
    encoder.position_encodings.encodings = table
    for layer_spec, layer in zip(encoder.layer, parts.encoder_layers):
        _set_attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_norm, self_attention=True)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_norm)
    decoder.embeddings.weight = _numpy(parts.target_embedding.embeddings)
    decoder.position_encodings.encodings = table
    for layer_spec, layer in zip(decoder.layer, parts.decoder_layers):
        _set_attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_norm, self_attention=True)
        _set_attention(layer_spec.attention, layer.cross_attention, layer.cross_attention_norm, self_attention=False)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_norm)
    if config.norm_first:
        _set_layer_norm(encoder.layer_norm, parts.encoder_norm)
        _set_layer_norm(decoder.layer_norm, parts.decoder_norm)
    if parts.output_projection is None:  # shared: logits = x E^T, no bias
        decoder.projection.weight = _numpy(parts.target_embedding.embeddings)
    else:
        _set_linear(decoder.projection, parts.output_projection)
    spec.validate()
    return spec


# -------------------------------------------------------------------------------------------------------- export


def _write_export(translator, directory, quantize):
    """Writes a complete export of `translator` into the new folder `directory`."""
    import ctranslate2

    spec = build_spec(translator)
    spec.optimize(quantization=None if quantize == "none" else quantize)
    directory.mkdir()
    spec.save(str(directory))
    (directory / "source.model").write_bytes(translator.source_tokenizer.model_proto)
    (directory / "target.model").write_bytes(translator.target_tokenizer.model_proto)
    metadata = {
        "format": FORMAT_NAME,
        "quantize": quantize,
        "ctranslate2_version": ctranslate2.__version__,
        "model": translator.config.to_dict(),
        "max_output_length": translator.max_output_length,
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "start": START_ID, "end": END_ID},
        "source_vocabulary_sha256": vocabulary_fingerprint(_pieces(translator.source_tokenizer.model_proto)),
        "target_vocabulary_sha256": vocabulary_fingerprint(_pieces(translator.target_tokenizer.model_proto)),
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _float32_reference(translator):
    """`translator`, or the same model decoding in float32 (the float32 CTranslate2 model is compared with float32
    Keras)."""
    if translator.decode_precision == "float32":
        return translator
    return type(translator)(translator.task or translator.model, max_output_length=translator.max_output_length,
                            decode_precision="float32", **({} if translator.task else {
                                "source_tokenizer": translator.source_tokenizer, "target_tokenizer": translator.target_tokenizer}))


def _refuse_existing(out_dir: Path):
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} already exists and is not an empty directory: a CTranslate2 export owns its whole folder "
            "(model, vocabularies and tokenizers), so choose a new --out or remove the old export first."
        )


def export_ctranslate2(translator, out_dir, quantize="none", check_sentences=None) -> Path:
    """Writes a CTranslate2 model directory for `translator` (a `keras_transformer.Translator`) at `out_dir` and
    returns it. `quantize`: `none` (float32 weights), `int8` or `int16` (CTranslate2's weight quantization).

    The folder is built next to `out_dir` under a hidden temporary name and renamed into place at the end, so a
    failed export leaves nothing behind; an existing non-empty `out_dir` is refused. Before the rename, a float32
    conversion must translate `check_sentences` (default: two short probes) exactly as Keras greedy decoding does,
    and the quantized model (if any) must load and translate them."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)} for CTranslate2, got {quantize!r}.")
    _import_ctranslate2()
    out_dir = Path(out_dir)
    _refuse_existing(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    probes = list(check_sentences or PROBE_SENTENCES)
    try:
        checked = staging / "float32"
        _write_export(translator, checked, "none")
        expected = _float32_reference(translator).translate(probes)
        got = CTranslate2Translator.load(checked).translate(probes)
        if got != expected:
            raise RuntimeError(
                f"The float32 CTranslate2 model disagrees with Keras greedy decoding ({got} vs {expected}): the "
                f"conversion is wrong; nothing was written to {out_dir}."
            )
        final = checked
        if quantize != "none":
            final = staging / quantize
            _write_export(translator, final, quantize)
            CTranslate2Translator.load(final, compute_type="default").translate(probes)  # at its own precision
        _refuse_existing(out_dir)
        try:
            os.rename(final, out_dir)  # also replaces an empty directory
        except OSError as error:
            raise FileExistsError(f"Could not move the export into {out_dir} ({error}); nothing was written.") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def is_ctranslate2_export(path) -> bool:
    """Whether `path` is a directory written by `export_ctranslate2` (cheap: reads one small JSON file)."""
    metadata = Path(path) / METADATA_FILE
    if not (metadata.is_file() and (Path(path) / "model.bin").is_file()):
        return False
    try:
        return json.loads(metadata.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError):
        return False


# -------------------------------------------------------------------------------------------------------- runner


_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_kernels_saturate(cpuinfo=None, environ=None) -> bool:
    """True where CTranslate2's int8 matrix products lose accuracy: a CPU without VNNI (`avx512_vnni`, `avx_vnni`)
    on which CTranslate2 uses oneDNN for them (its choice on non-Intel CPUs unless `CT2_USE_MKL=1`). oneDNN then
    multiplies u8 by s8 with `vpmaddubsw`, whose 16-bit sums saturate. Measured on a 2-core AMD EPYC with AVX2 only,
    tiny test model, 200 dev sentences: 6 outputs of the int8 model equal float32 Keras greedy; the same int8 weights
    computed in float32 give 171; MKL's int8 (`CT2_USE_MKL=1`) gives 165 but decodes the small preset 6x slower than
    oneDNN's int8 (23 vs 141 sentences/s at batch 32). Intel CPUs without VNNI (MKL's int8) were not measured and are
    not flagged. `cpuinfo`: the text of /proc/cpuinfo (read when None; False where there is none, see
    `runtime.cpu_info`)."""
    from keras_transformer.runtime import cpu_info

    environ = os.environ if environ is None else environ
    cpu = cpu_info(cpuinfo)
    if cpu is None or not cpu["flags"]:  # nothing known about the CPU: no claim
        return False
    use_mkl = environ.get("CT2_USE_MKL", "").strip().lower()
    if use_mkl in ("1", "true", "on", "yes") or (not use_mkl and cpu["vendor_id"] == "GenuineIntel"):
        return False
    return not set(_VNNI_FLAGS) & cpu["flags"]


def resolve_compute_type(compute_type, quantize, device="cpu", saturates=None):
    """The compute type `CTranslate2Translator` passes to CTranslate2. `"auto"`: the precision of the export
    (`"default"`), except that int8/int16 weights are computed in float32 on a CPU where int8 kernels saturate
    (`int8_kernels_saturate`, or `saturates` when given); the file stays small and the outputs stay those of the
    int8 weights. Any other value is passed on; an int8 compute type named on such a CPU gets a warning."""

    def saturating():
        return device == "cpu" and (int8_kernels_saturate() if saturates is None else saturates)

    if compute_type != "auto":
        if "int8" in compute_type and saturating():
            warnings.warn(
                f"compute_type={compute_type!r} on a CPU without VNNI: CTranslate2's int8 matrix products saturate "
                "here, so most outputs differ from the float32 model. compute_type='auto' computes int8 weights in "
                "float32.",
                stacklevel=3,
            )
        return compute_type
    if quantize in ("int8", "int16") and saturating():
        warnings.warn(
            "This CPU has no VNNI, and CTranslate2's int8 matrix products on it saturate (most outputs then differ "
            "from the float32 model): the int8 weights are computed in float32 (the outputs of the int8 weights, at "
            "float32 speed). Pass compute_type='int8' to compute in int8 anyway, or set CT2_USE_MKL=1 before "
            "ctranslate2 is imported (accurate, but slower than float32 on AMD CPUs).",
            stacklevel=3,
        )
        return "float32"
    return "default"


def thread_layout(cores=None):
    """`(inter_threads, intra_threads)` for CTranslate2 on this host's CPUs: one translator per usable core, each
    with one thread (`inter_threads=cores, intra_threads=1`), and a batch is split so that they all get a part.

    On 2 cores this was 5x faster than one translator with `intra_threads=2` in an earlier measurement (a decode
    step of a small model is too short to share between two threads, and their synchronisation stalls when the
    cores are shared with other processes); docs/ctranslate2.md has this machine's figures."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(cores)), 1


class CTranslate2Translator:
    """Runs a CTranslate2 export (`export_ctranslate2`) with `ctranslate2.Translator`, tokenizing with the
    SentencePiece models inside the export. Same contract as `TFLiteTranslator.translate`: strings in, strings out.

    Args:
        path: the export directory.
        compute_type: CTranslate2's compute type. `"auto"`: the precision the weights were exported with (float32,
            int8 or int16; CTranslate2 falls back to a type this CPU supports), except on a CPU whose int8 kernels
            saturate (no VNNI, see `int8_kernels_saturate`), where int8/int16 weights are computed in float32, with
            a warning. Any CTranslate2 compute type (`"default"`, `"int8"`, `"float32"`, ...) is passed on as given.
            The one used is `self.compute_type`.
        inter_threads, intra_threads: CTranslate2's threads; None: `thread_layout()` (one translator per core, one
            thread each).
        device: `"cpu"` (the layout above is for CPUs) or `"cuda"`.

    Example:
    >>> CTranslate2Translator.load("exports/translator-ct2").translate(["설정"])  # doctest: +SKIP
    """

    def __init__(self, path, compute_type="auto", inter_threads=None, intra_threads=None, device="cpu"):
        ctranslate2 = _import_ctranslate2()
        import sentencepiece as spm

        path = Path(path)
        self.path = path
        self.metadata = _read_metadata(path)
        default_inter, default_intra = thread_layout()
        self.inter_threads = int(inter_threads or default_inter)
        self.intra_threads = int(intra_threads or default_intra)
        self.source_processor = spm.SentencePieceProcessor(model_file=str(path / "source.model"))
        self.target_processor = spm.SentencePieceProcessor(model_file=str(path / "target.model"))
        _check_vocabularies(path, self.metadata, self.source_processor, self.target_processor)
        self.max_length = int(self.metadata["model"]["max_length"])
        self.max_output_length = int(self.metadata["max_output_length"])
        self.compute_type = resolve_compute_type(compute_type, self.metadata.get("quantize"), device)
        self.translator = ctranslate2.Translator(
            str(path), device=device, compute_type=self.compute_type, inter_threads=self.inter_threads,
            intra_threads=self.intra_threads,
        )

    @classmethod
    def load(cls, path, **kwargs) -> "CTranslate2Translator":
        return cls(path, **kwargs)

    def translate(self, texts, beam_size=1, alpha=0.6, batch_size=64):
        """Translates a string or a list of strings; returns the same shape.

        `beam_size` 1 is greedy decoding (the same tokens as `Translator` greedy on float32 weights). With
        `beam_size` > 1, CTranslate2's beam search returns its `beam_size` best hypotheses by log-probability and
        they are ranked as `Translator` ranks its beams: log-probability / ((5 + length) / 6) ** alpha (GNMT,
        END counted in the length). CTranslate2's own length penalty (log-probability / length ** penalty) is not
        used. `batch_size` sentences are decoded at a time, split over the `inter_threads` translators."""
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}.")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("translate expects a string or a list of strings.")
        if not texts:
            return []
        protects = self.source_processor.piece_to_id(PLACEHOLDER_TOKENS[0]) != self.source_processor.unk_id()
        found = [protect(text) for text in texts] if protects else [(text, []) for text in texts]
        sources = self._source_pieces([protected for protected, _ in found])
        per_translator = max(1, math.ceil(min(batch_size, len(texts)) / self.inter_threads))
        outputs = [None] * len(texts)
        # As our decoder's mask does: a source with n placeholders never gets the tokens ⦅n+1⦆ ... CTranslate2
        # suppresses tokens per call, so sources are decoded in groups of equal placeholder count.
        groups = {}
        for i, pieces in enumerate(sources):  # the tokens left after cutting to max_length, as the model sees them
            groups.setdefault(len(set(pieces) & set(PLACEHOLDER_TOKENS)), []).append(i)
        raw = [[piece] for piece in self._raw_placeholder_pieces()] if protects else []
        for count, rows in sorted(groups.items()):
            suppressed = [[token] for token in PLACEHOLDER_TOKENS[count:]] + raw if protects else None
            results = self.translator.translate_batch(
                [sources[i] for i in rows], max_batch_size=per_translator, beam_size=beam_size, num_hypotheses=beam_size,
                length_penalty=0.0,  # rank by log-probability here, by the GNMT penalty below
                return_scores=beam_size > 1, return_end_token=True, min_decoding_length=0,
                max_decoding_length=self.max_output_length, max_input_length=0, suppress_sequences=suppressed or None,
            )
            for i, result in zip(rows, results):
                text = self.target_processor.decode(self._best(result, alpha))
                outputs[i] = restore(text, found[i][1]) if protects else text
        return outputs[0] if single else outputs

    def _raw_placeholder_pieces(self):
        """Target pieces that are whole format placeholders (as in `placeholders.raw_placeholder_ids`)."""
        if not hasattr(self, "_raw_pieces"):
            size = self.target_processor.get_piece_size()
            pieces = [self.target_processor.id_to_piece(i) for i in range(size)]
            self._raw_pieces = [
                piece for piece in pieces
                if (text := piece.replace("\u2581", " ").strip()) and find_placeholders(text) == [text]
            ]
        return self._raw_pieces

    def _source_pieces(self, texts):
        limit = self.max_length - 1  # CTranslate2 appends END (add_source_eos)
        pieces = [self.source_processor.encode(text, out_type=str) for text in texts]
        truncated = sum(len(p) > limit for p in pieces)
        if truncated:
            warnings.warn(f"{truncated} source sentence(s) were longer than max_length={self.max_length} tokens and were truncated.")
        return [p[:limit] for p in pieces]

    def _best(self, result, alpha):
        """The ids of the best hypothesis of one `TranslationResult`, without END."""
        # The pieces are the target vocabulary (checked on load), so piece_to_id maps them back exactly.
        hypotheses = [self.target_processor.piece_to_id(pieces) for pieces in result.hypotheses]
        best = hypotheses[0]
        if len(hypotheses) > 1:
            normalized = [score / ((5.0 + len(ids)) / 6.0) ** alpha for ids, score in zip(hypotheses, result.scores)]
            best = hypotheses[int(np.argmax(normalized))]
        return best[:-1] if best and best[-1] == END_ID else best


def _read_metadata(path: Path) -> dict:
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory: point to a folder written by `keras-transformer export --format ctranslate2`.")
    needed = ["model.bin", "config.json", METADATA_FILE, "source.model", "target.model"]
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a complete CTranslate2 export of keras-transformer: missing {', '.join(missing)}. Export it "
            "with `keras-transformer export --format ctranslate2`, which writes all of them into one folder."
        )
    metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path / METADATA_FILE} does not describe a CTranslate2 export (format {metadata.get('format')!r}).")
    return metadata


def _check_vocabularies(path, metadata, source_processor, target_processor):
    """The tokenizers in the folder, CTranslate2's vocabularies and the fingerprints stored at export time must all
    be the same vocabulary: a tokenizer from another export would silently map text to the wrong ids."""
    found = {}
    for side, processor in (("source", source_processor), ("target", target_processor)):
        found[side] = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        if vocabulary_fingerprint(found[side]) != metadata.get(f"{side}_vocabulary_sha256"):
            raise ValueError(
                f"{path / (side + '.model')} is not the {side} tokenizer this model was exported with (its vocabulary "
                f"fingerprint differs from the one in {METADATA_FILE}). Re-export the model instead of copying "
                "tokenizers between exports."
            )
    for side in ("source", "target"):
        vocabulary_file = path / f"{side}_vocabulary.json"
        if not vocabulary_file.is_file():
            vocabulary_file = path / "shared_vocabulary.json"
        if json.loads(vocabulary_file.read_text(encoding="utf-8")) != found[side]:
            raise ValueError(f"{vocabulary_file} does not match {side}.model: the export folder was modified; re-export it.")
