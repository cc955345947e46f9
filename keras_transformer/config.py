"""Configuration dataclasses: `TransformerConfig` (the model, with named presets) and `TrainingConfig` (a run).

The `base` and `big` presets are the two models of the paper (Table 3); `small` trains on a laptop CPU and
`tiny` exists for tests. Nothing here imports TensorFlow, so settings are validated before any heavy work.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

PRESETS: dict[str, dict[str, Any]] = {
    # For unit tests: builds and trains in seconds.
    "tiny": dict(num_layers=2, d_model=32, num_heads=4, dff=64, dropout_rate=0.0, max_length=64),
    # Trains on the bundled ko-en corpus in ~30 minutes on a 2-core CPU. No dropout: a 25-minute run sees the data
    # fewer than 4 times, too few for dropout's regularisation to pay for the slower fit (README, Results); for
    # longer runs, set dropout_rate=0.1 (`--set dropout_rate=0.1`).
    "small": dict(num_layers=3, d_model=256, num_heads=4, dff=1024, dropout_rate=0.0, max_length=64),
    # "Attention Is All You Need", Table 3, base model.
    "base": dict(num_layers=6, d_model=512, num_heads=8, dff=2048, dropout_rate=0.1, max_length=256),
    # "Attention Is All You Need", Table 3, big model.
    "big": dict(num_layers=6, d_model=1024, num_heads=16, dff=4096, dropout_rate=0.3, max_length=256),
}


@dataclasses.dataclass
class TransformerConfig:
    """Hyperparameters of the encoder-decoder Transformer.

    Args:
        num_layers: number of encoder layers and of decoder layers (N in the paper).
        d_model: width of every sub-layer output and of the embeddings.
        num_heads: attention heads (h); must divide `d_model`.
        dff: inner width of the position-wise feed-forward network.
        dropout_rate: dropout on sub-layer outputs, on embeddings + positional encodings and on
            attention weights (P_drop).
        src_vocab_size: source vocabulary size (ignored when `encoder_input_dim` is set).
        tgt_vocab_size: target vocabulary size.
        max_length: longest sequence the positional-encoding table covers, on both sides.
        pad_id: the padding token id; padded positions are masked everywhere.
        share_embeddings: share one matrix between source embedding, target embedding and the
            pre-softmax projection (paper, section 3.4); needs one shared vocabulary.
        norm_first: False = post-LN, as in the paper (`LayerNorm(x + Sublayer(x))`);
            True = pre-LN (`x + Sublayer(LayerNorm(x))` and a final LayerNorm), steadier for deep stacks.
        encoder_input_dim: None for token ids on the encoder side; an int for continuous feature
            vectors `[batch, src_len, encoder_input_dim]`, projected to `d_model` instead of embedded.
    """

    num_layers: int = 6
    d_model: int = 512
    num_heads: int = 8
    dff: int = 2048
    dropout_rate: float = 0.1
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    max_length: int = 256
    pad_id: int = 0
    share_embeddings: bool = False
    norm_first: bool = False
    encoder_input_dim: Optional[int] = None

    def __post_init__(self):
        for name in ("num_layers", "d_model", "num_heads", "dff", "tgt_vocab_size", "max_length"):
            _check_positive_int(name, getattr(self, name))
        if self.encoder_input_dim is None:
            _check_positive_int("src_vocab_size", self.src_vocab_size)
        else:
            _check_positive_int("encoder_input_dim", self.encoder_input_dim)
        if self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide d_model={self.d_model} "
                f"(each head gets d_model / num_heads dimensions); choose e.g. num_heads="
                f"{_divisors_near(self.d_model, self.num_heads)}."
            )
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        if not isinstance(self.pad_id, int) or self.pad_id < 0:
            raise ValueError(f"pad_id must be a non-negative int, got {self.pad_id!r}.")
        if self.share_embeddings:
            if self.encoder_input_dim is not None:
                raise ValueError(
                    "share_embeddings=True needs token ids on both sides, but encoder_input_dim="
                    f"{self.encoder_input_dim} makes the encoder read feature vectors. "
                    "Set share_embeddings=False."
                )
            if self.src_vocab_size != self.tgt_vocab_size:
                raise ValueError(
                    "share_embeddings=True needs one shared vocabulary, but src_vocab_size="
                    f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}. Train a joint "
                    "vocabulary or set share_embeddings=False."
                )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformerConfig":
        """A preset (`tiny`, `small`, `base`, `big`) with some fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "TransformerConfig":
        return cls(**_known_fields(cls, values, "TransformerConfig field"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)


def _known_fields(cls, values, what):
    """`values` if every key is a field of the dataclass `cls`, else a ValueError listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"Unknown {what}(s): {', '.join(unknown)}. Valid: {', '.join(sorted(fields))}.")
    return values


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _divisors_near(d_model, num_heads):
    return min((h for h in range(1, d_model + 1) if d_model % h == 0), key=lambda h: abs(h - num_heads))


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def _setting(default, help, flag=None, choices=None, type=None):
    """A `TrainingConfig` field with what the command line needs to offer it as a flag (`--<flag>`, default the
    field name with dashes): its help text, its choices, and its type where the default does not tell it."""
    metadata = {"help": help, "flag": flag, "choices": choices, "type": type}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainingConfig:
    """Settings of a training run (the model's own hyperparameters live in `TransformerConfig`).

    Args:
        preset: model preset (`tiny`, `small`, `base`, `big`); `model_overrides` changes single fields.
        source_vocab_size, target_vocab_size: SentencePiece vocabulary sizes learned from the training text.
        shared_vocabulary: learn one vocabulary from the source and target text together (of `source_vocab_size`
            pieces, which must equal `target_vocab_size`) and share one matrix between the source embedding, the
            target embedding and the output projection (the paper's section 3.4; the model's `share_embeddings`).
            Text that both sides have in common (code, names, placeholders, English words in Korean strings)
            then gets one embedding, and the model has fewer parameters to learn.
        max_length: longest tokenized sentence kept (longer pairs are filtered out and counted), START/END
            included. It is also the model's max_length (the length of its positional-encoding table): it replaces
            the preset's, and a `max_length` in `model_overrides` is refused, so the two can never disagree.
        tokens_per_batch: batch size in tokens; bucketing by length makes batches of similar length.
        warmup_steps, lr_scale: the paper's schedule, `lr_scale * d_model^-0.5 * min(...)`. The paper warms up
            for 4000 steps of a 100k-step run; the default 1000 suits the ~2000 steps of a 25-minute CPU run.
        label_smoothing: 0.1 in the paper.
        precision: `auto` (bfloat16 where the CPU has AMX/AVX512-BF16 or on a GPU, else float32),
            `float32`, `mixed_bfloat16` or `mixed_float16`.
        jit_compile: XLA-compile the train step. Off by default: on this CPU, XLA gave no speedup in float32
            and lost the bfloat16 (AMX) speedup that TensorFlow's oneDNN kernels give (see README, Performance).
        xla_fusion: let XLA fuse the element-wise and reduction ops of the train step (TensorFlow's auto-clustering
            restricted to "fusible" ops) while the matrix products stay on TensorFlow's oneDNN kernels. Off by
            default. It turns off token packing (`layers/token_packing.py`: XLA would compile again for every
            batch's number of real tokens), which gains more: on the AMD AVX512-BF16 host the default step
            (packing) trained 2,670 target tokens/s, with XLA fusion 2,079 (bench/results.json, 2026-12-04).
            Before packing, it made fixed-shape bfloat16 steps 22% faster on an Intel AMX machine in a step without
            the accuracy metric (bench/levers.json) but only 0.5% on an AMD machine in a step with it, and
            length-bucketed training 1% slower there (bench/results.json); it adds 16 s of start-up for one batch
            shape and about 90 s for the 9 bucket shapes, since the fused clusters are compiled for every shape.
            Measure it on your machine. It sets `TF_XLA_FLAGS`, which TensorFlow reads once per process when it first
            lists devices or optimizes a graph, so it only takes effect when training is the first TensorFlow work of
            the process (as in `keras-transformer train`); a `TF_XLA_FLAGS` of your own is left alone.
        steps_per_epoch: the training data is repeated; an "epoch" is this many steps (dev BLEU, backup and
            best-model selection happen at its end).
        epochs: maximum number of such epochs.
        time_limit_minutes: stop after this much training wall time (counted across restarts); None = no limit.
        dev_bleu_sentences: how many dev sentences the per-epoch BLEU uses (0 = skip dev BLEU).
        train_limit: use only the first N training pairs (for quick runs); None = all.
        keep_checkpoints: how many per-epoch weight checkpoints to keep in `checkpoints/` (for averaging).
        seed: seeds shuffling, initialisation and tokenizer training.
    """

    preset: str = _setting("small", "model preset", choices=tuple(PRESETS))
    model_overrides: dict = dataclasses.field(default_factory=dict)
    source_vocab_size: int = _setting(8000, "source SentencePiece vocabulary size (smaller when the data cannot fill it)")
    target_vocab_size: int = _setting(8000, "target SentencePiece vocabulary size (smaller when the data cannot fill it)")
    shared_vocabulary: bool = _setting(False, "learn one vocabulary from source and target text (size --source-vocab-size, which must equal --target-vocab-size) and share the embeddings and the output projection")
    max_length: int = _setting(64, "longest tokenized sentence, START/END included; also the model's max_length")
    tokens_per_batch: int = _setting(4096, "batch size in tokens (the global batch under tf.distribute)")
    warmup_steps: int = _setting(1000, "learning-rate warmup steps")
    lr_scale: float = _setting(1.0, "constant factor on the paper's learning rate")
    label_smoothing: float = _setting(0.1, "label smoothing of the cross-entropy")
    precision: str = _setting("auto", "numeric precision (auto: mixed_bfloat16 on CPUs with bf16 units and GPUs)", choices=PRECISIONS)
    jit_compile: bool = _setting(False, "XLA-compile the train step (slower on CPU: it loses oneDNN's bf16 matmuls)", flag="jit")
    xla_fusion: bool = _setting(False, "let XLA fuse the element-wise ops of the train step (turns token packing off: slower than the default on the AMD AVX512-BF16 host; slower start-up)")
    steps_per_epoch: int = _setting(500, "steps between dev-BLEU evaluations and backups")
    epochs: int = _setting(100, "maximum number of epochs")
    time_limit_minutes: Optional[float] = _setting(25.0, "training wall-clock budget in minutes, counted across restarts", flag="time-limit", type=float)
    dev_bleu_sentences: int = _setting(500, "dev sentences scored after every epoch (0 = none)")
    train_limit: Optional[int] = _setting(None, "use only the first N training pairs", type=int)
    keep_checkpoints: int = _setting(5, "per-epoch weight checkpoints kept for averaging")
    seed: int = _setting(0, "random seed")

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        for name in ("source_vocab_size", "target_vocab_size", "max_length", "tokens_per_batch", "warmup_steps", "steps_per_epoch", "epochs"):
            _check_positive_int(name, getattr(self, name))
        if self.tokens_per_batch < self.max_length:
            raise ValueError(
                f"tokens_per_batch={self.tokens_per_batch} must be at least max_length={self.max_length} "
                "(one sentence per batch)."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.time_limit_minutes is not None and self.time_limit_minutes <= 0:
            raise ValueError(f"time_limit_minutes must be positive or None, got {self.time_limit_minutes}.")
        if self.dev_bleu_sentences < 0:
            raise ValueError(f"dev_bleu_sentences must be >= 0, got {self.dev_bleu_sentences}.")
        if self.train_limit is not None and self.train_limit <= 0:
            raise ValueError(f"train_limit must be positive or None, got {self.train_limit}.")
        if self.shared_vocabulary and self.source_vocab_size != self.target_vocab_size:
            raise ValueError(
                f"shared_vocabulary needs one vocabulary size, but source_vocab_size={self.source_vocab_size} != "
                f"target_vocab_size={self.target_vocab_size}: set both to the same value."
            )
        if "share_embeddings" in self.model_overrides:
            raise ValueError(
                "share_embeddings follows the training setting shared_vocabulary (--shared-vocabulary), which also "
                "learns the one vocabulary it needs: set that instead of the model override."
            )
        if "max_length" in self.model_overrides:
            raise ValueError(
                "max_length is one setting for the data and the model: set it as the training setting max_length "
                "(--max-length), not as a model override."
            )
        self.model_config(1, 1)  # validates preset and overrides early

    def model_config(self, src_vocab_size, tgt_vocab_size) -> TransformerConfig:
        """The model's config: the preset, the overrides, the vocabulary sizes, this run's max_length (which
        replaces the preset's) and share_embeddings (= shared_vocabulary)."""
        values = {**self.model_overrides, "max_length": self.max_length, "share_embeddings": self.shared_vocabulary}
        return TransformerConfig.from_preset(self.preset, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, **values)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        return cls(**_known_fields(cls, values, "training setting"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
