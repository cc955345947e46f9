"""The main job: learn tokenizers, build the model, train it with `model.fit`, keep the best model by dev BLEU.

Everything of one run lives in one directory (`saved_models/<run-name>/`), whose layout only
`keras_transformer.run_directory.RunDirectory` knows. Run the same command again after a crash or kill and it
continues from the last backup: same weights, optimizer state and step count; the wall-clock budget counts the
time already spent.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import keras
import numpy as np

from keras_transformer.config import TrainingConfig  # noqa: F401 (re-exported: training settings live in config.py)
from keras_transformer.files import fault_point
from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
from keras_transformer.metrics import MaskedAccuracy
from keras_transformer.optimizers import create_optimizer
from keras_transformer.run_directory import RunDirectory, RunDirectoryError  # noqa: F401 (RunDirectoryError re-exported)
from keras_transformer.runtime import enable_xla_fusion


def resolve_precision(precision: str) -> str:
    """`auto` -> `mixed_bfloat16` on a GPU or on a CPU with bfloat16 matrix units (AMX-BF16 / AVX512-BF16),
    where it measured faster at the same BLEU (see README, Performance); `float32` elsewhere."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16"
    from keras_transformer.runtime import cpu_info

    flags = (cpu_info() or {}).get("flags", frozenset())
    return "mixed_bfloat16" if {"amx_bf16", "avx512_bf16"} & flags else "float32"


def train(settings: TrainingConfig, run_dir, train_corpus, dev_corpus, verbose=None, extra_callbacks=(), strategy=None):
    """Trains a model on `train_corpus` (a `ParallelCorpus`), selecting by BLEU on `dev_corpus`, in `run_dir`.

    `strategy`: a `tf.distribute.Strategy` (see `keras_transformer.distribute.get_strategy`); the model, optimizer,
    schedule and metrics are created under its scope and `model.fit` distributes the dataset. `tokens_per_batch` is
    the GLOBAL batch: each of the N replicas gets about 1/N of every batch.

    Returns a dict with the run's report (also written to `train_report.json`)."""
    enable_xla_fusion(settings)  # first: TensorFlow reads these flags once, when it first looks at devices
    import tensorflow as tf

    from keras_transformer.distribute import is_chief, worker_path

    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if settings.tokens_per_batch // settings.max_length < replicas:
        raise ValueError(
            f"tokens_per_batch={settings.tokens_per_batch} gives batches of {settings.tokens_per_batch // settings.max_length} "
            f"sentence(s) at max_length={settings.max_length}, fewer than the {replicas} replicas: raise tokens_per_batch "
            f"to at least {replicas * settings.max_length}."
        )
    chief = is_chief(strategy)
    if not chief:  # other workers of a multi-worker run write their own copy, never the chief's files
        run_dir = worker_path(Path(run_dir), strategy)
        dev_corpus = None
    run = RunDirectory(run_dir)
    with run.lock():
        return _train(settings, run, train_corpus, dev_corpus, verbose, extra_callbacks, strategy)


def _train(settings, run, train_corpus, dev_corpus, verbose, extra_callbacks, strategy):
    import tensorflow as tf

    from keras_transformer.data.pipeline import make_dataset
    from keras_transformer.distribute import prepare_for_fit
    from keras_transformer.translator import Translator

    keras.utils.set_random_seed(settings.seed)
    if settings.train_limit:
        train_corpus = train_corpus.head(settings.train_limit)
    train_corpus = protect_placeholders(train_corpus)

    tokenizers = _tokenizers(settings, run, train_corpus)

    precision = resolve_precision(settings.precision)
    config = settings.model_config(tokenizers["source"].vocab_size, tokenizers["target"].vocab_size)
    _write_or_check_run_config(run, config, settings, precision)

    dataset, stats = make_dataset(
        train_corpus.sources,
        train_corpus.targets,
        tokenizers["source"],
        tokenizers["target"],
        max_length=settings.max_length,
        tokens_per_batch=settings.tokens_per_batch,
        shuffle=True,
        seed=settings.seed + run.completed_steps(),  # a restart sees a fresh order, not a replay
        repeat=True,
    )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    print(stats.summary())

    from keras_transformer.backbone import TransformerBackbone
    from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor
    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    with strategy.scope():
        backbone = TransformerBackbone.from_transformer_config(config, dtype=precision)
        preprocessor = TransformerSeq2SeqLMPreprocessor(tokenizers["source"], tokenizers["target"], max_length=config.max_length)
        model = TransformerSeq2SeqLM(backbone, preprocessor, compile=False)
        model.compile(
            optimizer=create_optimizer(config.d_model, settings.warmup_steps, settings.lr_scale),
            loss=MaskedSparseCategoricalCrossentropy(pad_id=config.pad_id, label_smoothing=settings.label_smoothing),
            metrics=[MaskedAccuracy(pad_id=config.pad_id)],
            jit_compile=settings.jit_compile,
        )
        # The bucketed dataset is already tokenized: fit skips the preprocessor (it stays for saving and generate).
        model.preprocessor = None
        # Build weights, optimizer slots, loss and metrics before BackupAndRestore loads into them.
        example = {"encoder_inputs": np.ones((1, 4), "int32"), "decoder_inputs": np.ones((1, 4), "int32")}
        prepare_for_fit(model, strategy, example, np.ones((1, 4), "int32"))
    print(
        f"Model: preset {settings.preset}, {model.count_params():,} parameters, precision {precision}; "
        f"{strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}), global batch {settings.tokens_per_batch} tokens "
        f"(about {settings.tokens_per_batch // strategy.num_replicas_in_sync} per replica)."
    )

    translator = Translator(backbone, source_tokenizer=tokenizers["source"], target_tokenizer=tokenizers["target"])
    dev = dev_corpus.head(settings.dev_bleu_sentences) if settings.dev_bleu_sentences and dev_corpus else None
    progress = TrainingProgress(run, settings.time_limit_minutes, strategy)
    best = BestModelCheckpoint(translator, dev, run, preprocessor)
    # Order at each epoch end: dev BLEU, weight checkpoint, history, backup, then the best model. A kill before the
    # backup redoes the epoch (its history entry is replaced); a kill after it is repaired when training resumes.
    callbacks = [
        keras.callbacks.TensorBoard(str(run.logs_dir), update_freq=100, write_graph=False),
        best.scorer,
        EpochCheckpoints(run.checkpoints_dir, keep=settings.keep_checkpoints),
        progress,
        Backup(run),
        best,
        *extra_callbacks,
    ]
    if verbose is None:  # a live progress bar on a terminal, one line per epoch in logs and CI
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.time()
    model.fit(dataset, epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)  # the dataset shuffles itself
    if not run.best_model_path.exists():  # no dev set: keep the last model
        best.save({"epoch": None, "step": int(model.optimizer.iterations.numpy()), "val_bleu": None})
    report = {
        "run_dir": str(run.path),
        "preset": settings.preset,
        "precision": precision,
        "parameters": model.count_params(),
        "steps": int(model.optimizer.iterations.numpy()),
        "training_seconds": round(progress.elapsed(), 1),
        "this_session_seconds": round(time.time() - started, 1),
        "best_dev_bleu": run.best_bleu(),
        "pipeline": stats.to_dict(),
    }
    run.write_report(run.report_path, report)
    return report


def _tokenizers(settings, run, train_corpus):
    """`{"source": ..., "target": ...}` SubwordTokenizers: learned from the training text on the first start, loaded
    from the run directory on a restart. With `shared_vocabulary`, one tokenizer learned from both sides serves as
    both (the run directory still holds one file per side, so every loader reads it the same way)."""
    from keras_transformer.data.tokenizer import SubwordTokenizer

    if all(run.tokenizer_path(side).exists() for side in ("source", "target")):
        return {side: SubwordTokenizer.load(run.tokenizer_path(side)) for side in ("source", "target")}
    if settings.shared_vocabulary:
        learned = [(("source", "target"), list(train_corpus.sources) + list(train_corpus.targets), settings.source_vocab_size)]
    else:
        learned = [(("source",), train_corpus.sources, settings.source_vocab_size), (("target",), train_corpus.targets, settings.target_vocab_size)]
    tokenizers = {}
    for sides, texts, size in learned:
        started = time.time()
        tokenizer = SubwordTokenizer.train(texts, vocab_size=size, seed=settings.seed)
        print(f"Learned the {' and '.join(sides)} vocabulary ({tokenizer.vocab_size} pieces) in {time.time() - started:.1f} s.")
        tokenizers.update({side: tokenizer for side in sides})
    for side in ("source", "target"):
        run.save_tokenizer(tokenizers[side], side)
    return tokenizers


def protect_placeholders(corpus):
    """The training pairs with their format placeholders replaced by ⦅1⦆, ⦅2⦆, ... (`placeholders.protect_pair`: a
    target placeholder takes the token of the same source placeholder, so reordered placeholders are learnt). The
    tokenizers learn from this text, so no vocabulary is spent on the placeholders themselves."""
    from keras_transformer.data.placeholders import protect_pairs

    sources, targets = protect_pairs(corpus.sources, corpus.targets)
    return dataclasses.replace(corpus, sources=sources, targets=targets)


# Settings that only say how long to train, how often to look, or how fast to run (not what is learned): a restart
# may change them.
BUDGET_SETTINGS = ("epochs", "time_limit_minutes", "dev_bleu_sentences", "keep_checkpoints", "xla_fusion")


def _write_or_check_run_config(run, config, settings, precision):
    wanted = {"model": config.to_dict(), "training": settings.to_dict(), "precision": precision}
    if run.exists():
        found = run.read_config()
        # A setting added after the run was made counts as its default (what that run trained with).
        for key, value in type(settings)().to_dict().items():
            found.setdefault("training", {}).setdefault(key, value)
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
                f"{run.path} holds a run made with different settings ({', '.join(changed)}). Resume it with the "
                "same settings, or train into a new directory (another --run-name)."
            )
    else:
        run.write_config(wanted)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keeps the run's `model.keras` the best model so far by dev BLEU (a `TransformerSeq2SeqLM` with its tokenizers,
    no optimizer state), with `model.json` beside it saying which epoch it is.

    Two callbacks share the work: `scorer` (placed before the history is written) translates the dev sentences and
    logs `val_bleu` / `val_chrf`; this one (placed after the backup) saves the model when that BLEU beats every
    earlier epoch in the history. A kill between the backup and the save is repaired at the next start: the
    restored weights are then exactly those of the newest history entry, and it is saved if it is the best."""

    def __init__(self, translator, dev_corpus, run, preprocessor):
        super().__init__()
        self.translator = translator
        self.dev_corpus = dev_corpus
        self.run = run
        self.preprocessor = preprocessor
        self.scorer = _DevBleu(self)
        self.improved = False

    def save(self, entry=None):
        from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

        task = TransformerSeq2SeqLM(self.translator.model, self.preprocessor, compile=False)
        self.run.save_best_model(task)
        self.run.write_report(self.run.path / "model.json", {k: entry[k] for k in ("epoch", "step", "val_bleu")} if entry else {})

    def on_train_begin(self, logs=None):
        history = self.run.read_history()
        scored = [h for h in history if "val_bleu" in h]
        if not scored:
            return
        best = max(scored, key=lambda h: h["val_bleu"])
        saved = self.run.read_model_info()
        restored_step = int(self.model.optimizer.iterations.numpy())
        if best is history[-1] and saved.get("epoch") != best["epoch"] and restored_step == best["step"]:
            print(f"Saving the best model of epoch {best['epoch']} (the previous run stopped before it could).")
            self.save(best)

    def on_epoch_end(self, epoch, logs=None):
        if self.improved:
            self.save(self.run.read_history()[-1])
            self.improved = False


class _DevBleu(keras.callbacks.Callback):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def on_epoch_end(self, epoch, logs=None):
        owner = self.owner
        if logs is None or owner.dev_corpus is None:
            return
        from keras_transformer.evaluation import corpus_scores

        started = time.time()
        owner.translator.refresh_weights()
        fault_point("dev_bleu")
        hypotheses = owner.translator.translate(owner.dev_corpus.sources)
        scores = corpus_scores(hypotheses, owner.dev_corpus.targets)
        logs["val_bleu"], logs["val_chrf"] = scores["bleu"], scores["chrf"]
        earlier = [h["val_bleu"] for h in owner.run.read_history() if h["epoch"] < epoch + 1 and "val_bleu" in h]
        owner.improved = scores["bleu"] > max(earlier, default=-1.0)
        print(
            f"\nepoch {epoch + 1}: dev BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} "
            f"({time.time() - started:.0f} s){' - best so far' if owner.improved else ''}"
        )


class Backup(keras.callbacks.Callback):
    """Resuming: restores the newest backup when training begins (weights, optimizer state and epoch, so the step
    count continues) and saves one after every epoch, each through `RunDirectory.save_backup` (kill-safe)."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_train_begin(self, logs=None):
        epoch = self.run.restore_backup(self.model)
        if epoch:
            self.model._initial_epoch = epoch  # what keras.callbacks.BackupAndRestore sets, so fit() continues there

    def on_epoch_end(self, epoch, logs=None):
        self.run.save_backup(self.model, epoch + 1)


class TrainingProgress(keras.callbacks.Callback):
    """Appends each epoch's logs to `history.json` (with step, learning rate and cumulative wall time) and stops
    training once the wall-clock budget, counted across restarts, is spent. In a multi-worker run, the workers
    agree on when to stop (one all-reduce per step), so that none waits forever for one that stopped."""

    def __init__(self, run, time_limit_minutes=None, strategy=None):
        super().__init__()
        self.run = run
        self.strategy = strategy
        self.limit = None if time_limit_minutes is None else time_limit_minutes * 60.0
        history = run.read_history()
        self.previous = float(history[-1]["wall_seconds"]) if history else 0.0
        self.started = None

    def elapsed(self):
        return self.previous + (time.time() - self.started if self.started else 0.0)

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self.started = time.time()
        self.synchronize_workers = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if self.limit is not None and self.previous >= self.limit:
            print(f"The time budget of this run is already spent ({self.previous / 60:.1f} min): nothing to train.")
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        fault_point("batch")
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
        self.run.write_history_entry(entry)


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
        from keras_transformer.files import atomic_path

        with atomic_path(self.directory / f"epoch-{epoch + 1:04d}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, *self.model.get_weights())
        for old in sorted(self.directory.glob("epoch-*.npz"))[: -self.keep]:
            old.unlink()
