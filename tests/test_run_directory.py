"""The run directory survives anything: SIGKILL at any point of training, a second trainer, a full disk."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from keras_transformer.files import FileWriteError, atomic_write, atomic_write_json
from keras_transformer.run_directory import RunDirectory, RunDirectoryError

from conftest import CLI_ENV as ENV, RUN, STEPS, train_cli as train


def check_consistent(run_dir, complete):
    """Every file that exists is complete; the history has no gap or duplicate and its steps follow the epochs; a
    finished run's `model.keras` is the best-by-dev-BLEU epoch of its history."""
    run = RunDirectory(run_dir)
    history = run.read_history()  # valid JSON, or this raises
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert [h["step"] for h in history] == [STEPS * h["epoch"] for h in history]
    if complete:  # a killed writer leaves its temporary file; the next run removes it
        assert not [p.name for p in run_dir.rglob(".*tmp*")], "a temporary file was left behind"
    latest = run_dir / "backup" / "latest.json"
    if latest.exists():
        state = json.loads(latest.read_text())
        assert (run_dir / "backup" / state["state"] / "model.weights.h5").is_file()
        assert state["epoch"] <= len(history)
    if complete:
        best = max(history, key=lambda h: h["val_bleu"])
        assert run.read_model_info()["epoch"] == best["epoch"], (run.read_model_info(), [h["val_bleu"] for h in history])
        from keras_transformer.run_directory import load_seq2seq_lm

        load_seq2seq_lm(run_dir)  # loads alone


def test_sigkill_at_any_point_resumes_consistently(killed_run):
    """The shared `killed_run` (conftest.FAULTS): after every kill the run directory is consistent; the same command
    finishes it; the finished epochs are never redone and the step count continues."""
    *kills, finished = killed_run["results"]
    for kill, snapshot in zip(kills, killed_run["snapshots"]):
        assert kill["returncode"] == -signal.SIGKILL, kill
        assert snapshot.is_dir(), f"no run directory after the kill at {kill['fault']}"
        check_consistent(snapshot, complete=False)
    assert finished["returncode"] == 0, finished["output"]
    run_dir = killed_run["run_dir"]
    check_consistent(run_dir, complete=True)
    history = RunDirectory(run_dir).read_history()
    assert [h["step"] for h in history] == [STEPS, 2 * STEPS, 3 * STEPS]  # the optimizer's step counter survived
    first_epoch = RunDirectory(killed_run["snapshots"][0]).read_history()
    assert [h["epoch"] for h in first_epoch] == [1] and history[0] == first_epoch[0]  # epoch 1 was not redone
    assert history[-1]["loss"] < history[0]["loss"]
    for name in ("config.json", "source.model", "target.model", "model.keras", "backup", "logs"):
        assert (run_dir / name).exists(), name


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run = RunDirectory(tmp_path / "r")
    with run.lock():
        assert int(run.lock_path.read_text()) == os.getpid()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            run.lock_path.write_text(f"{sleeper.pid}\n")  # as if another live process held it
            with pytest.raises(RunDirectoryError, match=f"being trained by another process \\(PID {sleeper.pid}\\)"):
                with RunDirectory(tmp_path / "r").lock():
                    pass
        finally:
            sleeper.kill()
            sleeper.wait()
        with pytest.warns(UserWarning, match="no longer running"):  # the PID is dead now
            with RunDirectory(tmp_path / "r").lock():
                assert int(run.lock_path.read_text()) == os.getpid()
    assert not run.lock_path.exists()


def test_a_live_training_blocks_a_second_train_command(tmp_path):
    runs = tmp_path / "runs"
    first = subprocess.Popen([sys.executable, "-m", "keras_transformer", "train", "--runs-dir", str(runs), "--run-name", "r",
                              *RUN, "--epochs", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        lock = runs / "r" / ".lock"
        deadline = time.time() + 120
        while time.time() < deadline and not lock.exists():
            time.sleep(0.05)
        second = train(runs, epochs=50)
        assert second.returncode == 2
        assert f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_disk_full_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "history.json"
    atomic_write(target, "old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FileWriteError, match=f"could not write {target}: No space left on device"):
        atomic_write_json(target, {"new": 1})
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_an_unwritable_run_directory_is_one_error_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the runs directory should be")
    out = subprocess.run([sys.executable, "-m", "keras_transformer", "train", "--runs-dir", str(blocker / "runs"), *RUN],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().startswith("error:") and str(blocker) in out.stderr and "Traceback" not in out.stderr
