"""Distributed training with tf.distribute, fault tolerance and checkpoint averaging, at a tiny scale.

TensorFlow fixes its devices when it first initialises them, so everything that needs two logical CPU devices
(MirroredStrategy) or a TF_CONFIG (MultiWorkerMirroredStrategy) runs in a subprocess with a small script.
The two-worker tests start their workers inside a private network namespace (`unshare --net`, only the
loopback interface) when the machine allows it: TensorFlow's gRPC server listens on 0.0.0.0, and there it can
only be reached on 127.0.0.1.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras

from conftest import cli_in_process

ENV = {
    **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore",
    "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
}

# Two logical CPU devices; must run before TensorFlow initialises its devices.
TWO_CPUS = """
import os, sys, json
import numpy as np
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras import ops
from keras_transformer import TransformerConfig, build_transformer, MaskedSparseCategoricalCrossentropy, MaskedAccuracy
from keras_transformer.distribute import prepare_for_fit
"""

# The loss fix proposed for keras_transformer/losses.py (see test_project_loss_under_mirrored_strategy...):
# each replica returns its token sum divided by the GLOBAL token count. Keras leaves a scalar loss unscaled and
# the optimizer sums the replicas' gradients, so the step's gradient is exactly that of the global token mean.
GLOBAL_MEAN_LOSS = """
class GlobalMeanLoss(MaskedSparseCategoricalCrossentropy):
    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
        if self.label_smoothing:
            nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * -ops.mean(log_probs, axis=-1)
        mask = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        count = ops.sum(mask)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(count))
        return ops.sum(nll * mask) / ops.maximum(count, 1.0)
"""

MIRRORED_SCRIPT = TWO_CPUS + GLOBAL_MEAN_LOSS + """
cfg = TransformerConfig.from_preset("tiny", src_vocab_size=23, tgt_vocab_size=19, max_length=16)  # dropout 0
rng = np.random.default_rng(0)
B, L, STEPS = 8, 10, 3
enc = rng.integers(1, 23, (STEPS * B, L)).astype("int32")
dec = rng.integers(1, 19, (STEPS * B, L)).astype("int32")
lab = rng.integers(1, 19, (STEPS * B, L)).astype("int32")
for i in range(STEPS * B):  # rows 0-3 of every batch (replica 0) are long, rows 4-7 (replica 1) short
    n = L if i % B < B // 2 else 2
    enc[i, n:] = dec[i, n:] = lab[i, n:] = 0
data = lambda: tf.data.Dataset.from_tensor_slices(({"encoder_inputs": enc, "decoder_inputs": dec}, lab)).batch(B)
x1 = {"encoder_inputs": enc[:1], "decoder_inputs": dec[:1]}
keras.utils.set_random_seed(0)
initial = build_transformer(cfg)
initial(x1)
w0 = initial.get_weights()

def run(strategy, loss_class):
    with strategy.scope():
        model = build_transformer(cfg)
        model(x1)
        model.set_weights(w0)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss_class(pad_id=0), metrics=[MaskedAccuracy()])
        # Builds the compiled loss and metrics and skips fit()'s "symbolic build" from strategy.reduce("MEAN",
        # first batch), which turns the token ids into floats.
        prepare_for_fit(model, strategy, x1, lab[:1])
    history = model.fit(data(), epochs=1, verbose=0, shuffle=False)
    return model.get_weights(), history.history["loss"][-1]

one = tf.distribute.OneDeviceStrategy("/cpu:0")
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {name: run(strategy, loss) for name, strategy, loss in [
    ("single", one, MaskedSparseCategoricalCrossentropy),
    ("mirrored_project_loss", two, MaskedSparseCategoricalCrossentropy),
    ("mirrored_global_mean_loss", two, GlobalMeanLoss),
]}
diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
print("RESULT " + json.dumps({
    "replicas": two.num_replicas_in_sync,
    "update": diff(results["single"][0], w0),
    "diff": {name: diff(w, results["single"][0]) for name, (w, _) in results.items()},
    "loss": {name: loss for name, (_, loss) in results.items()},
}))
"""

TRAIN_MIRRORED_SCRIPT = TWO_CPUS + """
from keras_transformer.data import load_bundled_corpus
from keras_transformer.training import TrainingConfig, train
settings = TrainingConfig(preset="tiny", train_limit=1000, source_vocab_size=800, target_vocab_size=600, steps_per_epoch=4,
                          epochs=1, warmup_steps=20, tokens_per_batch=1024, dev_bleu_sentences=0, time_limit_minutes=None,
                          max_length=32, precision="float32")
report = train(settings, sys.argv[1], load_bundled_corpus("train"), load_bundled_corpus("dev"), verbose=0,
               strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print("RESULT " + json.dumps({"steps": report["steps"]}))
"""

# One worker of a MultiWorkerMirroredStrategy job (TF_CONFIG from the launcher): trains a tiny copy task with the
# project's model, loss, metric and optimizer, backs up every epoch, logs every step, saves its final weights.
WORKER_SCRIPT = """
import json, os, sys, time
from pathlib import Path
out, steps, epochs, pause = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
import numpy as np
import tensorflow as tf
from keras_transformer.distribute import get_strategy, is_chief, prepare_for_fit, task_info, worker_path
strategy = get_strategy("multi_worker")  # before any other TensorFlow op
task_type, index = task_info(strategy)
import keras
from keras_transformer import TransformerConfig, build_transformer, MaskedSparseCategoricalCrossentropy, MaskedAccuracy, create_optimizer

rng = np.random.default_rng(0)  # the same data on every worker; each takes its replicas' rows of every batch
tokens = rng.integers(3, 19, (64, 8)).astype("int32")
for row, n in zip(tokens, rng.integers(3, 9, 64)):
    row[n:] = 0
decoder = np.concatenate([np.ones((64, 1), "int32"), tokens[:, :-1]], axis=1) * (tokens > 0)
dataset = tf.data.Dataset.from_tensor_slices(({"encoder_inputs": tokens, "decoder_inputs": decoder}, tokens)).repeat().batch(8)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = dataset.with_options(options)

cfg = TransformerConfig.from_preset("tiny", src_vocab_size=19, tgt_vocab_size=19, max_length=16)
x1 = {"encoder_inputs": tokens[:1], "decoder_inputs": decoder[:1]}
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_transformer(cfg)
    model.compile(optimizer=create_optimizer(cfg.d_model, warmup_steps=10), loss=MaskedSparseCategoricalCrossentropy(),
                  metrics=[MaskedAccuracy()])
    # Builds everything from an example batch and works around two Keras 3 bugs of fit() under MultiWorkerMirroredStrategy.
    prepare_for_fit(model, strategy, x1, tokens[:1])

log = open(out / f"progress-{index}.jsonl", "a")
def write(**entry):
    log.write(json.dumps(entry) + "\\n")
    log.flush()

class Progress(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        write(event="begin", iterations=int(self.model.optimizer.iterations.numpy()), chief=is_chief(strategy))
    def on_train_batch_end(self, batch, logs=None):
        write(event="batch", iterations=int(self.model.optimizer.iterations.numpy()), loss=float(logs["loss"]))
        time.sleep(pause)

backup = worker_path(out / "backup", strategy)  # each worker its own backup directory
model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[
    keras.callbacks.BackupAndRestore(str(backup), save_freq="epoch", double_checkpoint=True, delete_checkpoint=False),
    Progress(),
])
np.savez(out / f"weights-{index}.npz", *model.get_weights())
write(event="end", iterations=int(model.optimizer.iterations.numpy()))
"""

# Starts the two workers on 127.0.0.1 (free ports), SIGKILLs worker 1 in the middle of epoch 2, then
# restarts both with the same command. Enforces its own deadlines and never leaves a worker behind.
LAUNCHER_SCRIPT = """
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
worker, out = sys.argv[1], Path(sys.argv[2])
steps, epochs, pause, deadline_s = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
deadline = time.time() + deadline_s
ports = []
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
    ports.append(s.getsockname()[1])
for s in sockets:
    s.close()
cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
report = {"ports": ports, "returncodes": []}

def start(attempt):
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        logfile = open(out / f"worker-{i}-{attempt}.log", "w")
        procs.append(subprocess.Popen([sys.executable, worker, str(out), str(steps), str(epochs), pause],
                                      env=env, stdout=logfile, stderr=subprocess.STDOUT))
    return procs

def wait(procs):
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    report["returncodes"].append([p.returncode for p in procs])

def iterations(i):
    path = out / f"progress-{i}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max([json.loads(l)["iterations"] for l in lines if '"batch"' in l] or [0])

procs = start(0)
target = steps + steps // 2
while time.time() < deadline and iterations(1) < target and all(p.poll() is None for p in procs):
    time.sleep(0.05)
if iterations(1) < target:
    for p in procs:
        p.kill()
    print("LAUNCHER " + json.dumps({**report, "error": "worker 1 never reached the middle of epoch 2",
                                    "early_exit": [p.poll() for p in procs]}))
    sys.exit(1)
procs[1].send_signal(signal.SIGKILL)
procs[1].wait()
report["killed_at"] = iterations(1)
# Worker 0 now waits for its peer in a collective; a cluster manager restarts the whole job: so do we.
try:
    procs[0].wait(timeout=2)
    report["worker_0_exited_by_itself"] = True
except subprocess.TimeoutExpired:
    procs[0].kill()
    report["worker_0_exited_by_itself"] = False
wait(procs)
procs = start(1)
wait(procs)
print("LAUNCHER " + json.dumps(report))
"""


@functools.lru_cache(maxsize=None)
def _isolated_network_prefix():
    """`unshare` into a fresh user + network namespace with only `lo` up, when this machine allows it."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return ()
    prefix = ("unshare", "--user", "--map-root-user", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
    probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print('ok')"
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if done.stdout.strip() == "ok" else ()


def _run(tmp_path, name, code, *args, timeout=180, prefix=()):
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    done = subprocess.run([*prefix, sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)
    return done


def _result(done, tag="RESULT"):
    lines = [line for line in done.stdout.splitlines() if line.startswith(tag + " ")]
    assert lines, f"no {tag} line (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len(tag) + 1:])


# ---------------------------------------------------------------------------------------------------------------
# get_strategy / is_chief


def test_default_strategy_and_chief():
    import tensorflow as tf

    from keras_transformer.distribute import get_strategy, is_chief, worker_path

    strategy = get_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert is_chief(strategy) and worker_path("runs/x/backup", strategy).as_posix() == "runs/x/backup"
    with pytest.raises(ValueError, match="Unknown strategy 'horovod'"):
        get_strategy("horovod")


def test_mirrored_without_gpu_falls_back_to_one_cpu_replica_and_says_so(caplog):
    import tensorflow as tf

    from keras_transformer.distribute import get_strategy

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with caplog.at_level("WARNING", logger="keras_transformer.distribute"):
        strategy = get_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync == 1
    assert "no GPU found" in caplog.text


@pytest.mark.parametrize("value, message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "no 'task'"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', r"index 2 must be an integer in \[0, 2\)"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not a job of the cluster"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, value, message):
    from keras_transformer.distribute import get_strategy

    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message) as error:
        get_strategy("multi_worker")
    assert '"cluster": {"worker": ["host1:12345", "host2:12345"]}' in str(error.value)  # shows what is expected


def test_tpu_strategy_without_a_tpu_is_a_clear_error(monkeypatch):
    from keras_transformer.distribute import get_strategy

    for variable in ("TPU_NAME", "TPU_IP_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match="No TPU found.*--tpu"):
        get_strategy("tpu")
    # --tpu local connects this process's TensorFlow to a "cluster": do it in a subprocess.
    probe = ("from keras_transformer.distribute import get_strategy\ntry:\n    get_strategy('tpu', tpu='local')\n"
             "except ValueError as error:\n    print('ERROR', error)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, timeout=120)
    assert "ERROR No TPU found 'local': NotFoundError" in done.stdout, done.stdout + done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# MirroredStrategy over two logical CPUs vs one device


@pytest.fixture(scope="module")
def mirrored_results(tmp_path_factory):
    done = _run(tmp_path_factory.mktemp("mirrored"), "mirrored", MIRRORED_SCRIPT, timeout=240)
    return _result(done)


# Not bit-identical: the replicas' gradients are summed by an all-reduce, i.e. the per-token terms are added in
# another order than on one device; float32 rounding then differs in the last bits (observed ~1e-7).
ATOL = 1e-5


def test_mirrored_matches_one_device_when_the_loss_is_the_global_token_mean(mirrored_results):
    assert mirrored_results["replicas"] == 2
    assert mirrored_results["update"] > 0.05  # the steps really moved the weights
    assert mirrored_results["diff"]["mirrored_global_mean_loss"] < ATOL
    assert mirrored_results["loss"]["mirrored_global_mean_loss"] == pytest.approx(mirrored_results["loss"]["single"], rel=1e-5)


def test_project_loss_under_mirrored_strategy_matches_one_device(mirrored_results):
    assert mirrored_results["diff"]["mirrored_project_loss"] < ATOL
    assert mirrored_results["loss"]["mirrored_project_loss"] == pytest.approx(mirrored_results["loss"]["single"], rel=1e-5)


def test_train_runs_under_mirrored_strategy(tmp_path):
    # Its own process: a second MirroredStrategy in the process of MIRRORED_SCRIPT reuses collective instance keys
    # and its all-reduces then fail with a shape mismatch.
    done = _run(tmp_path, "train_mirrored", TRAIN_MIRRORED_SCRIPT, tmp_path / "run", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _result(done)["steps"] >= 3


# ---------------------------------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _launch(tmp_path, steps, epochs, pause, deadline=200):
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER_SCRIPT))
    done = _run(tmp_path, "launcher", LAUNCHER_SCRIPT, tmp_path / "worker.py", tmp_path, steps, epochs, pause,
                deadline, timeout=deadline + 60, prefix=_isolated_network_prefix())
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("worker-*.log")))
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n{logs}"
    return _result(done, "LAUNCHER"), logs


STEPS, EPOCHS = 6, 3


@pytest.fixture(scope="module")
def killed_workers(tmp_path_factory):
    """Two workers of 3 epochs x 6 steps; worker 1 is SIGKILLed in the middle of epoch 2 and both are restarted with
    the same command until they finish."""
    tmp_path = tmp_path_factory.mktemp("workers")
    report, logs = _launch(tmp_path, steps=STEPS, epochs=EPOCHS, pause=0.2)
    return tmp_path, report, logs


def test_two_workers_train_in_sync(killed_workers):
    tmp_path, report, logs = killed_workers
    assert report["returncodes"][-1] == [0, 0], logs
    events = [_events(tmp_path / f"progress-{i}.jsonl") for i in range(2)]
    assert [e[0]["chief"] for e in events] == [True, False]  # worker 0 is the chief (no "chief" job)
    assert [e[-1] for e in events] == [{"event": "end", "iterations": STEPS * EPOCHS}] * 2
    first, second = (np.load(tmp_path / f"weights-{i}.npz") for i in range(2))
    for name in first.files:  # the same all-reduced update on both workers
        np.testing.assert_allclose(first[name], second[name], rtol=0, atol=1e-6)
    losses = [e["loss"] for e in events[0] if e["event"] == "batch"]  # running mean over each epoch
    assert losses[-1] < losses[0] - 0.1, losses


def test_killed_worker_resumes_from_backup_after_restarting_both(killed_workers):
    """Kill worker 1 (SIGKILL) in the middle of epoch 2, restart both workers with the same command: both resume
    from the end-of-epoch-1 backup (optimizer step count restored) and finish in sync."""
    tmp_path, report, logs = killed_workers
    assert report["returncodes"][-1] == [0, 0], logs
    assert STEPS < report["killed_at"] < 2 * STEPS  # killed in epoch 2, after the epoch-1 backup
    for i in range(2):
        events = _events(tmp_path / f"progress-{i}.jsonl")
        begins = [e["iterations"] for e in events if e["event"] == "begin"]
        assert begins == [0, STEPS], begins  # the restart continued from the backup at the end of epoch 1
        assert events[-1] == {"event": "end", "iterations": STEPS * EPOCHS}
        repeated = report["killed_at"] - begins[1]
        assert 0 < repeated <= STEPS  # only the steps since the last backup were done twice
        assert (tmp_path / ("backup" if i == 0 else ".workers/worker-1/backup") / "latest.weights.h5").exists()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint averaging


def _fake_run(run_dir, config, offsets):
    """A run directory with config.json, tokenizers whose sizes `config` is changed to, and checkpoints."""
    from keras_transformer import build_transformer
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.data.tokenizer import SubwordTokenizer

    run_dir.mkdir(parents=True, exist_ok=True)
    dev = load_bundled_corpus("dev").head(300)
    sizes = []
    for side, texts in (("source", dev.sources), ("target", dev.targets)):
        tokenizer = SubwordTokenizer.train(texts, vocab_size=400, hard_vocab_limit=False)
        tokenizer.save(run_dir, prefix=side)
        sizes.append(tokenizer.vocab_size)
    config = config.replace(src_vocab_size=sizes[0], tgt_vocab_size=sizes[1])
    model = build_transformer(config)
    model({"encoder_inputs": np.ones((1, 4), "int32"), "decoder_inputs": np.ones((1, 4), "int32")})
    weights = model.get_weights()
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": config.to_dict(), "training": {}, "precision": "float32"}))
    checkpoints = []
    for epoch, offset in enumerate(offsets, start=1):
        checkpoint = [w + np.asarray(offset, w.dtype) for w in weights]
        np.savez(run_dir / "checkpoints" / f"epoch-{epoch:04d}.npz", *checkpoint)
        checkpoints.append(checkpoint)
    return checkpoints


def test_average_of_the_last_checkpoints_is_their_elementwise_mean(tmp_path, tiny_config):
    import keras_transformer
    from keras_transformer.averaging import average_checkpoints

    checkpoints = _fake_run(tmp_path, tiny_config, offsets=[1.0, 2.0, 4.5])
    path = average_checkpoints(tmp_path, last=2)
    assert path == tmp_path / "averaged.keras" and path.exists()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file is gone
    model = keras_transformer.load_model(path)
    for got, a, b in zip(model.get_weights(), checkpoints[1], checkpoints[2]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-6)
    out = average_checkpoints(tmp_path, last=1, out=tmp_path / "sub" / "last.keras")
    for got, want in zip(keras_transformer.load_model(out).get_weights(), checkpoints[2]):
        np.testing.assert_array_equal(got, want)


def test_averaging_errors(tmp_path, tiny_config):
    from keras_transformer.averaging import average_checkpoints, average_weights

    with pytest.raises(FileNotFoundError, match="config.json"):
        average_checkpoints(tmp_path / "nothing")
    checkpoints = _fake_run(tmp_path / "run", tiny_config, offsets=[0.0, 3.0])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="last must be an integer >= 1"):
            average_checkpoints(tmp_path / "run", last=bad)
    with pytest.warns(UserWarning, match="only 2: averaging those"):
        path = average_checkpoints(tmp_path / "run", last=5)
    import keras_transformer

    np.testing.assert_allclose(keras_transformer.load_model(path).get_weights()[0], checkpoints[0][0] + 1.5, atol=1e-6)
    with pytest.raises(ValueError, match=r"must end in \.keras"):
        average_checkpoints(tmp_path / "run", last=2, out=tmp_path / "model.h5")

    # Checkpoints of another config.
    config = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {**config, "dff": 48}}))
    with pytest.raises(ValueError, match="do not fit the model.*another config"):
        average_checkpoints(tmp_path / "run", last=2)
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match="No checkpoints"):
        average_checkpoints(tmp_path / "run")

    with pytest.raises(ValueError, match="different shapes"):
        average_weights([[np.zeros(2)], [np.zeros(3)]])
    with pytest.raises(ValueError, match="has 2 arrays"):
        average_weights([[np.zeros(2)], [np.zeros(2), np.zeros(1)]])
    mixed = average_weights([[np.float32([1, 2]), np.int64([7])], [np.float32([2, 4]), np.int64([9])]])
    np.testing.assert_array_equal(mixed[0], np.float32([1.5, 3]))
    assert mixed[0].dtype == np.float32 and mixed[1].tolist() == [9]  # integers are not averaged: the newest


@pytest.fixture(scope="module")
def trained_tiny_run(tmp_path_factory):
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.training import TrainingConfig, train

    keras.mixed_precision.set_global_policy("float32")
    run_dir = tmp_path_factory.mktemp("averaging_run")
    settings = TrainingConfig(
        preset="tiny", train_limit=2000, source_vocab_size=1500, target_vocab_size=1000, steps_per_epoch=20, epochs=3,
        warmup_steps=20, tokens_per_batch=1024, dev_bleu_sentences=0, time_limit_minutes=None, max_length=32,
        precision="float32",
    )
    train(settings, run_dir, load_bundled_corpus("train"), load_bundled_corpus("dev"), verbose=0)
    return run_dir


def test_averaged_real_run_translates(trained_tiny_run):
    """`average --last 3` on a real (tiny, 60-step) run: the mean of the 3 checkpoints, a better model than the
    first checkpoint on training pairs, and it runs through the Translator. (After 60 steps the tiny model has
    not yet learned more than token frequencies: its greedy outputs are mostly whitespace pieces, i.e. empty
    strings, exactly like the non-averaged model's.)"""
    import keras_transformer
    from keras_transformer import MaskedSparseCategoricalCrossentropy, build_transformer
    from keras_transformer.averaging import load_checkpoint
    from keras_transformer.config import TransformerConfig
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.data.pipeline import make_dataset
    from keras_transformer.data.tokenizer import SubwordTokenizer
    from keras_transformer.translator import Translator

    run_dir = trained_tiny_run
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.npz")) == [f"epoch-000{i}.npz" for i in (1, 2, 3)]
    done = cli_in_process("average", "--model", run_dir, "--last", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(run_dir / "averaged.keras") in done.stdout

    model = keras_transformer.load_model(run_dir / "averaged.keras")
    checkpoints = [load_checkpoint(run_dir / "checkpoints" / f"epoch-000{i}.npz") for i in (1, 2, 3)]
    for got, *ws in zip(model.get_weights(), *checkpoints):
        np.testing.assert_allclose(got, np.mean(np.stack(ws).astype(np.float64), axis=0), rtol=1e-6, atol=1e-6)

    config = TransformerConfig.from_dict(json.loads((run_dir / "config.json").read_text())["model"])
    source, target = SubwordTokenizer.load(run_dir / "source.model"), SubwordTokenizer.load(run_dir / "target.model")
    train = load_bundled_corpus("train")
    dataset, _ = make_dataset(train.sources[:200], train.targets[:200], source, target, max_length=32, batch_size=200,
                              bucket_boundaries=[32], shuffle=False)
    x, y = next(iter(dataset))
    loss = MaskedSparseCategoricalCrossentropy()
    first = build_transformer(config)
    first(x)
    first.set_weights(checkpoints[0])
    last = build_transformer(config)
    last(x)
    last.set_weights(checkpoints[-1])
    averaged_loss, first_loss, last_loss = (float(loss(y, m(x))) for m in (model, first, last))
    assert averaged_loss < first_loss and averaged_loss < last_loss + 0.1, (averaged_loss, first_loss, last_loss)

    sentences = ["어제 카페 갔었어 거기 사람 많더라"] + load_bundled_corpus("dev").sources[:7]
    outputs = Translator(model).translate(sentences)
    assert len(outputs) == len(sentences) and all(isinstance(o, str) for o in outputs)
