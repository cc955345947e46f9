"""`RunDirectory`: the only code that knows the layout of a training run's directory (`saved_models/<run-name>/`).

    config.json          model config + training settings + precision (a restart must match it)
    source.model/.vocab  target.model/.vocab   SentencePiece tokenizers (learned once, reused on restart)
    backup/              BackupAndRestore checkpoint: weights, optimizer state, epoch (what resuming needs)
    checkpoints/         the weights after each of the last `keep_checkpoints` epochs (for averaging)
    model.keras          the best model so far by dev BLEU: a TransformerSeq2SeqLM with its tokenizers and no
                         optimizer state; it translates on its own, with no other file beside it
    model.json           which epoch and step model.keras is, and its dev BLEU
    history.json         per-epoch loss, accuracy, dev BLEU, learning rate, wall time
    logs/                TensorBoard logs
    eval-<name>/         hypotheses and report of `keras-transformer evaluate`
    train_report.json    what was trained, for how long, with which result
    .lock                the PID of the process training into the directory

Every file goes through `keras_transformer.files` (a temporary name, then `os.replace`), so a kill at any moment
leaves either the previous file or the new one. `lock()` makes a second `train` into a live run stop at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from keras_transformer.files import FileWriteError, atomic_path, atomic_write, atomic_write_json


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (another run's settings, a live training process, a broken file)."""


class RunDirectory:
    """One run directory. Paths are properties; reads and writes are methods (all writes atomic)."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"RunDirectory({str(self.path)!r})"

    # === Layout ===
    config_path = property(lambda self: self.path / "config.json")
    backup_dir = property(lambda self: self.path / "backup")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    best_model_path = property(lambda self: self.path / "model.keras")
    history_path = property(lambda self: self.path / "history.json")
    logs_dir = property(lambda self: self.path / "logs")
    report_path = property(lambda self: self.path / "train_report.json")
    lock_path = property(lambda self: self.path / ".lock")

    def tokenizer_path(self, side) -> Path:
        return self.path / f"{side}.model"

    def eval_dir(self, name) -> Path:
        return self.path / f"eval-{name}"

    def plots_dir(self) -> Path:
        return self.path / "plots"

    def exists(self) -> bool:
        return self.config_path.is_file()

    # === Reading ===
    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a run directory: it has no config.json. Point to the directory that "
                "`keras-transformer train` wrote (saved_models/<run-name>)."
            )
        try:
            values = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise RunDirectoryError(f"{self.config_path} is not valid JSON ({error}).") from None
        if not isinstance(values, dict) or not isinstance(values.get("model"), dict):
            raise RunDirectoryError(f"{self.config_path} has no 'model' section with the model's settings.")
        return values

    def model_config(self):
        from keras_transformer.config import TransformerConfig

        return TransformerConfig.from_dict(self.read_config()["model"])

    def load_preprocessor(self):
        """The run's tokenizers (`source.model`, `target.model`) in a `TransformerSeq2SeqLMPreprocessor` for its
        model's `max_length`."""
        from keras_transformer.data.tokenizer import SubwordTokenizer
        from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor

        config = self.model_config()
        missing = [p.name for p in (self.tokenizer_path("source"), self.tokenizer_path("target")) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path} lacks {', '.join(missing)}: is it a run directory of `keras-transformer train`?")
        tokenizers = [SubwordTokenizer.load(self.tokenizer_path(side)) for side in ("source", "target")]
        for side, tokenizer, size in zip(("source", "target"), tokenizers, (config.src_vocab_size, config.tgt_vocab_size)):
            if tokenizer.vocab_size != size:
                raise RunDirectoryError(
                    f"{self.tokenizer_path(side)} has {tokenizer.vocab_size} pieces but the model in {self.config_path} "
                    f"expects {size}: the files come from different runs."
                )
        return TransformerSeq2SeqLMPreprocessor(*tokenizers, max_length=config.max_length)

    def read_history(self) -> list[dict]:
        if not self.history_path.exists():
            return []
        return json.loads(self.history_path.read_text(encoding="utf-8"))

    def completed_steps(self) -> int:
        history = self.read_history()
        return int(history[-1]["step"]) if history else 0

    def read_model_info(self) -> dict:
        """`model.json`: the epoch, step and dev BLEU of `model.keras` ({} when there is none)."""
        path = self.path / "model.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def best_bleu(self):
        scores = [h["val_bleu"] for h in self.read_history() if "val_bleu" in h]
        return max(scores) if scores else None

    # === Writing (atomic) ===
    def write_config(self, values: dict):
        atomic_write_json(self.config_path, values)

    def write_history_entry(self, entry: dict):
        """Appends (or replaces) the entry of `entry["epoch"]`; later epochs, from a run that was killed after
        writing them but before its backup, are dropped, so the history never has a gap or a duplicate."""
        history = [h for h in self.read_history() if h["epoch"] < entry["epoch"]] + [entry]
        atomic_write(self.history_path, json.dumps(history, indent=1))

    def write_report(self, path, values: dict):
        atomic_write_json(path, values)

    def save_tokenizer(self, tokenizer, side):
        tokenizer.save(self.path, prefix=side)

    def save_best_model(self, task):
        """`task` as `model.keras`, without optimizer state (a copy that was never compiled for training)."""
        save_inference_model(task, self.best_model_path)

    # === Backup (for resuming) ===
    def save_backup(self, model, epoch: int):
        """Weights and optimizer state of `model` after `epoch`, as `backup/state-NNNN/`; then `latest.json` is
        switched to it (atomically) and older states are removed. A kill at any point leaves the previous state
        in force."""
        import shutil

        directory = self.backup_dir / f"state-{epoch:04d}"
        with atomic_path(directory, suffix=".tmp") as tmp:
            tmp.mkdir()
            model.save_weights(tmp / "model.weights.h5")
            atomic_write_json(tmp / "state.json", {"epoch": epoch, "step": int(model.optimizer.iterations.numpy())})
            if directory.exists():  # the same epoch again (resumed before the pointer moved): replace it
                shutil.rmtree(directory)
        atomic_write_json(self.backup_dir / "latest.json", {"state": directory.name, "epoch": epoch})
        for old in self.backup_dir.glob("state-*"):
            if old.name != directory.name:
                shutil.rmtree(old, ignore_errors=True)

    def restore_backup(self, model) -> int:
        """Loads the newest complete backup into `model` (weights and optimizer state); returns its epoch (0 when
        there is none)."""
        latest = self.backup_dir / "latest.json"
        if not latest.is_file():
            return 0
        state = json.loads(latest.read_text(encoding="utf-8"))
        directory = self.backup_dir / state["state"]
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # the optimizer's slots must exist before loading
        model.load_weights(directory / "model.weights.h5")
        return int(state["epoch"])

    def _remove_stale_temporaries(self):
        """Temporary files of a writer that was killed (`.<name>.<random>.tmp...`): safe to remove under the lock,
        since nothing else writes here then. They were never moved into place, so nothing refers to them."""
        import shutil

        for path in list(self.path.rglob(".*.tmp*")):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # === Lock ===
    @contextlib.contextmanager
    def lock(self):
        """Holds `.lock` (this process's PID) while training. A lock of a live process stops this one with a
        message naming it; a lock left by a dead process is taken over with a warning."""
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_pid(self.lock_path)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise RunDirectoryError(
                        f"{self.path} is being trained by another process (PID {owner}). Wait for it to finish, stop "
                        f"it (kill {owner}), or train into another directory (--run-name)."
                    ) from None
                warnings.warn(
                    f"{self.lock_path} was left by a process that is no longer running (PID {owner}): taking it over.",
                    stacklevel=3,
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path)
                continue
            except OSError as error:
                raise FileWriteError(f"could not write {self.lock_path}: {error.strerror or error}.") from error
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            break
        self._remove_stale_temporaries()
        try:
            yield self
        finally:
            if _read_pid(self.lock_path) == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path)


def _read_pid(path):
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_inference_model(task, path):
    """Saves `task` (a TransformerSeq2SeqLM) to `path` (`.keras`) atomically, without optimizer state, so the file
    holds weights, config and tokenizers only (about a third of a file with Adam's two slots per weight). A task
    that has an optimizer is saved through a fresh copy that was never compiled; one without (e.g. a new task
    around the training backbone) as it is."""
    from keras_transformer.backbone import TransformerBackbone
    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    if getattr(task, "optimizer", None) is not None:
        backbone = TransformerBackbone.from_config(task.backbone.get_config())
        backbone.set_weights(task.backbone.get_weights())
        task = TransformerSeq2SeqLM(backbone=backbone, preprocessor=task.preprocessor, name=task.name, compile=False)
    with atomic_path(path) as tmp:
        task.save(tmp)
    return Path(path)


def load_seq2seq_lm(path):
    """A `TransformerSeq2SeqLM` from a run directory (its `model.keras`), a `.keras` file, or a local keras-hub preset
    directory. A run directory written by keras-transformer 0.1 (a plain functional model beside `config.json`,
    `source.model` and `target.model`) is converted on the fly, with a warning that says how to convert it for good.
    """
    import keras

    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a run directory (saved_models/<run-name>), a .keras file or a preset directory.")
    if path.is_dir() and (path / "metadata.json").is_file():
        return load_preset(path)
    model_file = path if path.suffix == ".keras" else path / "model.keras"
    if not model_file.is_file():
        raise FileNotFoundError(
            f"{path} holds no model: expected {model_file.name} (a run directory of `keras-transformer train` gets one "
            "after its first epoch) or a keras-hub preset (metadata.json)."
        )
    if _keras_file_class(model_file) != "TransformerSeq2SeqLM":
        return _load_legacy(model_file)
    try:
        with warnings.catch_warnings():
            # The file holds no optimizer state (on purpose); the task is compiled with a fresh optimizer on load.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)
            model = keras.saving.load_model(model_file, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds for a broken archive
        raise RunDirectoryError(f"{model_file} could not be loaded ({type(error).__name__}: {error}). Is the file complete?") from None
    if not isinstance(model, TransformerSeq2SeqLM):
        raise RunDirectoryError(f"{model_file} holds a {type(model).__name__}, not a TransformerSeq2SeqLM.")
    return model


def load_preset(path):
    """`TransformerSeq2SeqLM.from_preset` for a local directory, with clear errors for a missing or broken preset."""
    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    path = Path(path)
    needed = ["metadata.json", "config.json", "preprocessor.json", "model.weights.h5"]
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a complete keras-transformer preset: missing {', '.join(missing)}. Write one with "
            "`TransformerSeq2SeqLM.save_to_preset(dir)`."
        )
    try:
        return TransformerSeq2SeqLM.from_preset(str(path))
    except Exception as error:  # noqa: BLE001 - keras-hub raises many kinds for a broken preset
        raise RunDirectoryError(f"The preset {path} could not be loaded ({type(error).__name__}: {error}).") from None


def _keras_file_class(model_file):
    """The class name at the top of a `.keras` archive's config, without building anything."""
    import zipfile

    try:
        with zipfile.ZipFile(model_file) as archive:
            return json.loads(archive.read("config.json")).get("class_name")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise RunDirectoryError(f"{model_file} is not a complete .keras file ({error}). Was it cut off?") from None


def _load_legacy(model_file):
    """A keras-transformer 0.1 model file (functional model; config and tokenizers beside it) as a task: the weights
    are copied layer by layer into a new TransformerBackbone."""
    import keras

    from keras_transformer.backbone import TransformerBackbone
    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    run = RunDirectory(model_file.parent)
    if not run.exists():
        raise RunDirectoryError(
            f"{model_file} is not a TransformerSeq2SeqLM and has no config.json beside it: it cannot be loaded. Train "
            "it again with this version (`keras-transformer train`)."
        )
    config = run.model_config()
    preprocessor = run.load_preprocessor()
    import keras_transformer.layers  # noqa: F401  (registers the layers the old file refers to)

    old = keras.saving.load_model(model_file, compile=False, custom_objects={"Transformer": keras.Model, "keras_transformer>Transformer": keras.Model})
    backbone = TransformerBackbone.from_transformer_config(config)
    # The old functional model names its layers as the backbone does (encoder_layer_0, ...): copy by name.
    layers = {layer.name: layer for layer in backbone._flatten_layers(include_self=False, recursive=False)}
    for layer in old.layers:
        if layer.weights:
            layers[layer.name].set_weights(layer.get_weights())
    warnings.warn(
        f"{model_file} was written by keras-transformer 0.1; converted it in memory. To convert it for good: "
        f"`keras-transformer upgrade --model {run.path}`.",
        stacklevel=3,
    )
    return TransformerSeq2SeqLM(backbone=backbone, preprocessor=preprocessor)
