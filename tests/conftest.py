"""Shared fixtures and helpers for the keras_transformer test suite.

Everything here is sized for a shared 2-core CPU: tiny models, short sequences, few steps.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys

# Must be set before TensorFlow is imported anywhere (and reach the command-line processes the tests start).
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
# XLA compiles every decode loop, for every padded shape, in every test; at the tests' tiny sizes compiling costs
# far more than running. These flags skip LLVM's slowest optimisations: a compile of the tiny decode loop measured
# 3.2 s -> 1.5 s. The compiled programs compute the same ops (XLA's own passes still run); a user's XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras  # noqa: E402

from keras_transformer import TransformerConfig  # noqa: E402

SRC_VOCAB = 23
TGT_VOCAB = 19
PAD = 0


def pytest_configure(config):
    # numpy 2 + TensorFlow noise from keras' own convert_to_numpy; not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    )


@pytest.fixture(autouse=True)
def _seeded_float32_policy():
    """Every test starts from a fixed seed and the float32 policy, and leaves the policy as it found it."""
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def tiny_config():
    """The `tiny` preset (2 layers, d_model 32, 4 heads) with small, different source/target vocabularies."""
    return TransformerConfig.from_preset("tiny", src_vocab_size=SRC_VOCAB, tgt_vocab_size=TGT_VOCAB)


def tiny(**overrides):
    """`tiny` preset with the test vocabularies and some fields overridden."""
    values = dict(src_vocab_size=SRC_VOCAB, tgt_vocab_size=TGT_VOCAB)
    values.update(overrides)
    return TransformerConfig.from_preset("tiny", **values)


def random_ids(rng, batch, length, vocab, low=1):
    """Non-pad ids in [low, vocab) as int32."""
    return rng.integers(low, vocab, size=(batch, length)).astype("int32")


def run_model(model, encoder_inputs, decoder_inputs, training=False):
    """Eager forward pass, returned as numpy."""
    out = model({"encoder_inputs": encoder_inputs, "decoder_inputs": decoder_inputs}, training=training)
    return keras.ops.convert_to_numpy(out)


def numpy_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def cli_in_process(*args, stdin=""):
    """`keras-transformer ARGS` run by `cli.main` in this test process, as a `subprocess.CompletedProcess` with its
    return code and what it wrote to stdout and stderr (warnings included). A real process costs ~9 s of importing
    TensorFlow each time; tests of what a command does use this, and tests of the process itself (its exit on a
    kill, its start-up noise, an installed wheel) start a real one. The stderr filter of `hide_native_logs` works on
    the process's file descriptor 2, so it is left out here."""
    import contextlib
    import io
    import warnings
    from unittest import mock

    from keras_transformer import cli

    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(), \
            mock.patch("sys.stdin", io.StringIO(stdin)), mock.patch("keras_transformer.runtime.hide_native_logs"):
        warnings.simplefilter("default")
        warnings.showwarning = show
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exit_:  # argparse refusing the arguments
            code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["keras-transformer", *map(str, args)], code, out.getvalue(), err.getvalue())


def built_once(tmp_path_factory, name, build):
    """`<shared temp>/<name>`, filled by `build(path)` once per test session, also when pytest-xdist runs the tests
    in several worker processes: the first one to ask builds it under a file lock, the others wait and reuse it.
    Expensive fixtures (a trained run) are then made once, not once per worker."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the directory all workers' temp folders share
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that failed in another worker
            path.mkdir()
            build(path)
            done.write_text("")
    return path


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """A tiny translator trained for a few seconds on 3,000 bundled pairs (run directory with tokenizers and
    model.keras). Its outputs are poor but not empty, which is what equality tests of exports need. (lr_scale 0.1:
    the paper's formula gives d_model=32 a learning rate ten times too high, which makes it emit only END.)"""

    def build(run_dir):
        from keras_transformer.data import load_bundled_corpus
        from keras_transformer.training import TrainingConfig, train

        settings = TrainingConfig(
            preset="tiny", train_limit=3000, source_vocab_size=1500, target_vocab_size=1000, steps_per_epoch=100,
            epochs=2, warmup_steps=40, lr_scale=0.1, tokens_per_batch=1024, dev_bleu_sentences=0,
            time_limit_minutes=None, max_length=32, precision="float32",
        )
        train(settings, run_dir, load_bundled_corpus("train"), load_bundled_corpus("dev"), verbose=0)

    return built_once(tmp_path_factory, "tiny_run", build)


# The command-line training run that the kill tests and the main-job tests share (the tiny preset with one layer a
# side, which halves the tracing each of its processes does; 12 steps per epoch, dev BLEU on 20 sentences, no test
# evaluation). `train_command(runs, epochs)` trains it into `runs/r`.
CLI_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
STEPS = 12
RUN = ["--preset", "tiny", "--set", "num_layers=1", "--train-limit", "2000", "--source-vocab-size", "1000", "--target-vocab-size", "800",
       "--steps-per-epoch", str(STEPS), "--dev-bleu-sentences", "20", "--warmup-steps", "20", "--lr-scale", "0.1",
       "--tokens-per-batch", "1024", "--time-limit", "10", "--no-evaluate"]
# Killed while saving the best model (epoch 1 always is the best so far), while writing the history, inside the
# dev-BLEU pass, mid-epoch and while switching the backup: each time the same command resumes it.
FAULTS = ["replace:model.keras:1", "replace:history.json:1", "dev_bleu:1", "batch:5", "replace:latest.json:1"]


def train_command(runs, epochs):
    return [sys.executable, "-m", "keras_transformer", "train", "--runs-dir", str(runs), "--run-name", "r", *RUN,
            "--epochs", str(epochs)]


def train_cli(runs, epochs, fault=None):
    env = {k: v for k, v in CLI_ENV.items() if k != "KERAS_TRANSFORMER_FAULT"}
    if fault:
        env["KERAS_TRANSFORMER_FAULT"] = fault
    return subprocess.run(train_command(runs, epochs), capture_output=True, text=True, env=env, timeout=400)


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory):
    """`runs/r`: a 3-epoch run of the command line, SIGKILLed at each of FAULTS and restarted with the same command
    until it finished. `snapshots/<i>` is a copy of the run directory right after kill i; `results.json` has the
    return codes and output tails of every process."""

    def build(root):
        runs, results = root / "runs", []
        for i, fault in enumerate(FAULTS):
            killed = train_cli(runs, epochs=3, fault=fault)
            results.append({"fault": fault, "returncode": killed.returncode, "output": killed.stdout[-1500:] + killed.stderr[-1500:]})
            if (runs / "r").exists():
                shutil.copytree(runs / "r", root / "snapshots" / str(i), symlinks=True)
        done = train_cli(runs, epochs=3)
        results.append({"fault": None, "returncode": done.returncode, "output": done.stdout[-2000:] + done.stderr[-2000:]})
        (root / "results.json").write_text(json.dumps(results, indent=1))

    root = built_once(tmp_path_factory, "killed_run", build)
    return {"run_dir": root / "runs" / "r", "snapshots": [root / "snapshots" / str(i) for i in range(len(FAULTS))],
            "results": json.loads((root / "results.json").read_text())}
