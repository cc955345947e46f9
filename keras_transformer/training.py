"""The main job: learn tokenizers, build the model, train it with `model.fit`, keep the best model by dev BLEU.

Everything of one run lives in one directory (`saved_models/<run-name>/`):

    config.json          model config + training settings (a restart must match it)
    source.model/.vocab  target.model/.vocab   SentencePiece tokenizers
    backup/              BackupAndRestore checkpoint: weights, optimizer state, epoch (for resuming)
    checkpoints/         the weights after each of the last `keep_checkpoints` epochs (for averaging)
    model.keras          the best model so far by dev BLEU (what `Translator.load` reads)
    history.json         per-epoch loss, accuracy, dev BLEU, learning rate, wall time
    logs/                TensorBoard logs
    train_report.json    what was trained, for how long, with which result

Run the same command again after a crash or kill and it continues from the last backup: same weights,
optimizer state and step count; the wall-clock budget counts the time already spent.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

from keras_transformer.config import TrainingConfig  # noqa: F401 (re-exported: training settings live in config.py)
from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
from keras_transformer.metrics import MaskedAccuracy
from keras_transformer.model import build_transformer
from keras_transformer.optimizers import create_optimizer
from keras_transformer.runtime import enable_xla_fusion

def resolve_precision(precision: str) -> str:
    """`auto` -> `mixed_bfloat16` on a GPU or on a CPU with bfloat16 matrix units (AMX-BF16 / AVX512-BF16),
    where it measured faster at the same BLEU (see README, Performance); `float32` elsewhere."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "float32"


class RunDirectoryError(ValueError):
    """The run directory holds a different run (other config or vocabulary)."""


def train(settings: TrainingConfig, run_dir, train_corpus, dev_corpus, verbose=None, extra_callbacks=(), strategy=None):
    """Trains a model on `train_corpus` (a `ParallelCorpus`), selecting by BLEU on `dev_corpus`, in `run_dir`.

    `strategy`: a `tf.distribute.Strategy` (see `keras_transformer.distribute.get_strategy`); the model, optimizer,
    schedule and metrics are created under its scope and `model.fit` distributes the dataset. `tokens_per_batch` is
    the GLOBAL batch: each of the N replicas gets about 1/N of every batch.

    Returns a dict with the run's report (also written to `train_report.json`)."""
    enable_xla_fusion(settings)  # first: TensorFlow reads these flags once, when it first looks at devices
    import tensorflow as tf

    from keras_transformer.distribute import is_chief, prepare_for_fit, worker_path

    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if settings.tokens_per_batch // settings.max_length < replicas:
        raise ValueError(
            f"tokens_per_batch={settings.tokens_per_batch} gives batches of {settings.tokens_per_batch // settings.max_length} "
            f"sentence(s) at max_length={settings.max_length}, fewer than the {replicas} replicas: raise tokens_per_batch "
            f"to at least {replicas * settings.max_length}."
        )

    from keras_transformer.data.pipeline import make_dataset
    from keras_transformer.data.tokenizer import SubwordTokenizer
    from keras_transformer.translator import Translator

    run_dir = Path(run_dir)
    chief = is_chief(strategy)
    if not chief:  # other workers of a multi-worker run write their own copy, never the chief's files
        run_dir = worker_path(run_dir, strategy)
        dev_corpus = None
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(settings.seed)
    if settings.train_limit:
        train_corpus = train_corpus.head(settings.train_limit)

    # Tokenizers: learned once, then reused on restart.
    tokenizers = {}
    for side, texts, size in (
        ("source", train_corpus.sources, settings.source_vocab_size),
        ("target", train_corpus.targets, settings.target_vocab_size),
    ):
        path = run_dir / f"{side}.model"
        if path.exists():
            tokenizers[side] = SubwordTokenizer.load(path)
        else:
            started = time.time()
            tokenizers[side] = SubwordTokenizer.train(texts, vocab_size=size, seed=settings.seed)
            tokenizers[side].save(run_dir, prefix=side)
            print(f"Learned the {side} vocabulary ({tokenizers[side].vocab_size} pieces) in {time.time() - started:.1f} s.")

    precision = resolve_precision(settings.precision)
    config = settings.model_config(tokenizers["source"].vocab_size, tokenizers["target"].vocab_size)
    _write_or_check_run_config(run_dir, config, settings, precision)

    dataset, stats = make_dataset(
        train_corpus.sources,
        train_corpus.targets,
        tokenizers["source"],
        tokenizers["target"],
        max_length=settings.max_length,
        tokens_per_batch=settings.tokens_per_batch,
        shuffle=True,
        seed=settings.seed + _completed_steps(run_dir),  # a restart sees a fresh order, not a replay
        repeat=True,
    )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    print(stats.summary())

    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        with strategy.scope():
            model = build_transformer(config)
            model.compile(
                optimizer=create_optimizer(config.d_model, settings.warmup_steps, settings.lr_scale),
                loss=MaskedSparseCategoricalCrossentropy(pad_id=config.pad_id, label_smoothing=settings.label_smoothing),
                metrics=[MaskedAccuracy(pad_id=config.pad_id)],
                jit_compile=settings.jit_compile,
            )
            # Build weights, optimizer slots, loss and metrics before BackupAndRestore loads into them.
            example = {"encoder_inputs": np.ones((1, 4), "int32"), "decoder_inputs": np.ones((1, 4), "int32")}
            prepare_for_fit(model, strategy, example, np.ones((1, 4), "int32"))
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    print(
        f"Model: preset {settings.preset}, {model.count_params():,} parameters, precision {precision}; "
        f"{replicas} replica(s) ({type(strategy).__name__}), global batch {settings.tokens_per_batch} tokens "
        f"(about {settings.tokens_per_batch // replicas} per replica)."
    )

    translator = Translator(model, config, tokenizers["source"], tokenizers["target"])
    dev = dev_corpus.head(settings.dev_bleu_sentences) if settings.dev_bleu_sentences and dev_corpus else None
    progress = TrainingProgress(run_dir, settings.time_limit_minutes, strategy)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), save_freq="epoch", double_checkpoint=True, delete_checkpoint=False),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), update_freq=100, write_graph=False),
        DevBleuCheckpoint(translator, dev, run_dir / "model.keras"),
        EpochCheckpoints(run_dir / "checkpoints", keep=settings.keep_checkpoints),
        progress,
        *extra_callbacks,
    ]
    if verbose is None:  # a live progress bar on a terminal, one line per epoch in logs and CI
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.time()
    model.fit(dataset, epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)  # the dataset shuffles itself
    if not (run_dir / "model.keras").exists():  # no dev set: keep the last model
        model.save(run_dir / "model.keras")
    report = {
        "run_dir": str(run_dir),
        "preset": settings.preset,
        "precision": precision,
        "parameters": model.count_params(),
        "steps": int(model.optimizer.iterations.numpy()),
        "training_seconds": round(progress.elapsed(), 1),
        "this_session_seconds": round(time.time() - started, 1),
        "best_dev_bleu": progress.best_bleu(),
        "pipeline": stats.to_dict() if hasattr(stats, "to_dict") else str(stats),
    }
    (run_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


# Settings that only say how long to train, how often to look, or how fast to run (not what is learned): a restart
# may change them.
BUDGET_SETTINGS = ("epochs", "time_limit_minutes", "dev_bleu_sentences", "keep_checkpoints", "xla_fusion")


def _write_or_check_run_config(run_dir, config, settings, precision):
    path = run_dir / "config.json"
    wanted = {"model": config.to_dict(), "training": settings.to_dict(), "precision": precision}
    if path.exists():
        found = json.loads(path.read_text())
        for values in (found.get("training", {}), wanted["training"]):
            for key in BUDGET_SETTINGS:
                values.pop(key, None)
        if found != wanted:
            changed = sorted(
                f"{section}.{key}"
                for section in ("model", "training")
                for key in set(found.get(section, {})) | set(wanted[section])
                if found.get(section, {}).get(key) != wanted[section].get(key)
            )
            if found.get("precision") != precision:
                changed.append("precision")
            raise RunDirectoryError(
                f"{run_dir} holds a run made with different settings ({', '.join(changed)}). Resume it with the "
                "same settings, or train into a new directory (another --run-name)."
            )
    else:
        path.write_text(json.dumps(wanted, indent=2, sort_keys=True))


def _completed_steps(run_dir):
    history = _read_history(run_dir)
    return int(history[-1]["step"]) if history else 0


def _read_history(run_dir):
    path = Path(run_dir) / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


class DevBleuCheckpoint(keras.callbacks.Callback):
    """At each epoch end: translates the dev sentences, logs `val_bleu` and `val_chrf`, and saves the model
    to `path` when the BLEU is the best so far."""

    def __init__(self, translator, dev_corpus, path):
        super().__init__()
        self.translator = translator
        self.dev_corpus = dev_corpus
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.dev_corpus is None:
            return
        from keras_transformer.evaluation import corpus_scores

        started = time.time()
        hypotheses = self.translator.translate(self.dev_corpus.sources)
        scores = corpus_scores(hypotheses, self.dev_corpus.targets)
        logs["val_bleu"], logs["val_chrf"] = scores["bleu"], scores["chrf"]
        best = max([h.get("val_bleu", -1.0) for h in _read_history(self.path.parent)] + [-1.0])
        improved = scores["bleu"] > best
        if improved:
            tmp = self.path.with_suffix(".tmp.keras")
            self.model.save(tmp)
            os.replace(tmp, self.path)  # never a half-written model.keras
        print(
            f"\nepoch {epoch + 1}: dev BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} "
            f"({time.time() - started:.0f} s){' - saved as best' if improved else ''}"
        )


class TrainingProgress(keras.callbacks.Callback):
    """Appends each epoch's logs to `history.json` (with step, learning rate and cumulative wall time) and stops
    training once the wall-clock budget, counted across restarts, is spent. In a multi-worker run, the workers
    agree on when to stop (one all-reduce per step), so that none waits forever for one that stopped."""

    def __init__(self, run_dir, time_limit_minutes=None, strategy=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.strategy = strategy
        self.limit = None if time_limit_minutes is None else time_limit_minutes * 60.0
        history = _read_history(self.run_dir)
        self.previous = float(history[-1]["wall_seconds"]) if history else 0.0
        self.started = None

    def elapsed(self):
        return self.previous + (time.time() - self.started if self.started else 0.0)

    def best_bleu(self):
        scores = [h["val_bleu"] for h in _read_history(self.run_dir) if "val_bleu" in h]
        return max(scores) if scores else None

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self.started = time.time()
        self.synchronize_workers = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if self.limit is not None and self.previous >= self.limit:
            print(f"The time budget of this run is already spent ({self.previous / 60:.1f} min): nothing to train.")
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if self.limit is None:
            return
        spent = float(self.elapsed() >= self.limit)
        if self.synchronize_workers:
            import tensorflow as tf

            value = self.strategy.experimental_distribute_values_from_function(lambda context: tf.constant(spent))
            spent = float(self.strategy.reduce("SUM", value, axis=None))
        if spent > 0:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        entry = {key: float(value) for key, value in (logs or {}).items()}
        entry.update(
            epoch=epoch + 1,
            step=int(optimizer.iterations.numpy()),
            learning_rate=float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate, "numpy") else None,
            wall_seconds=round(self.elapsed(), 1),
        )
        history = [h for h in _read_history(self.run_dir) if h["epoch"] < entry["epoch"]] + [entry]
        tmp = self.run_dir / "history.json.tmp"
        tmp.write_text(json.dumps(history, indent=1))
        os.replace(tmp, self.run_dir / "history.json")


class EpochCheckpoints(keras.callbacks.Callback):
    """Saves the model weights (not the optimizer state) after every epoch as `epoch-NNNN.npz`, in
    `model.get_weights()` order, and keeps the newest `keep`, so that the last checkpoints can be averaged
    (paper, section 6.1; `keras_transformer.averaging`)."""

    def __init__(self, directory, keep=5):
        super().__init__()
        self.directory = Path(directory)
        self.keep = int(keep)

    def on_epoch_end(self, epoch, logs=None):
        if self.keep <= 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"epoch-{epoch + 1:04d}.npz"
        tmp = self.directory / f".epoch-{epoch + 1:04d}.tmp.npz"
        np.savez(tmp, *self.model.get_weights())
        os.replace(tmp, path)
        for old in sorted(self.directory.glob("epoch-*.npz"))[: -self.keep]:
            old.unlink()
