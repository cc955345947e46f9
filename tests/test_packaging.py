"""Packaging like a library: ranges that install beside other software, and a wheel that carries what the main job
needs and runs outside the source tree."""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _requirements():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def _constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    return pins


def test_ranges_admit_the_tested_versions_and_their_next_patch_release():
    """`pip install` beside a different patch version of a dependency keeps it: every requirement is a range that
    holds the version CI tests (constraints.txt) and the next patch release after it, never an exact pin."""
    pins = _constraints()
    for requirement in _requirements():
        name = requirement.name.lower().replace("_", "-")
        assert "==" not in str(requirement.specifier), f"{requirement} is an exact pin: give a compatible range"
        assert name in pins, f"{name} is not in constraints.txt"
        tested = pins[name]
        next_patch = Version(f"{tested.major}.{tested.minor}.{tested.micro + 1}")
        assert requirement.specifier.contains(tested), (requirement, tested)
        assert requirement.specifier.contains(next_patch), (requirement, next_patch)


def test_wheel_carries_the_corpus_and_runs_the_main_job_outside_the_source_tree(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".ci-venv", "saved_models", "exports",
                                                                "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("keras_transformer-*.whl"))
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (site / "keras_transformer" / "data" / "corpus" / "ko-en" / "train.tsv.gz").is_file()
    assert (site / "keras_transformer" / "demo" / "static" / "index.html").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**ENV, "PYTHONPATH": str(site)}  # the wheel's files first, before the editable checkout
    where = subprocess.run([sys.executable, "-c", "import keras_transformer; print(keras_transformer.__file__)"],
                           capture_output=True, text=True, env=env, cwd=elsewhere)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    # The bundled train and dev splits come from the wheel; the test report runs on 20 bundled test pairs, greedy
    # (the whole split with beam 4 would only add minutes).
    from keras_transformer.data import load_bundled_corpus

    test = load_bundled_corpus("test").head(20)
    (elsewhere / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(test.sources, test.targets)), encoding="utf-8")
    trained = subprocess.run(
        [sys.executable, "-m", "keras_transformer", "train", "--preset", "tiny", "--train-limit", "1500",
         "--source-vocab-size", "800", "--target-vocab-size", "800", "--steps-per-epoch", "5", "--epochs", "1",
         "--dev-bleu-sentences", "10", "--tokens-per-batch", "1024", "--time-limit", "5", "--test", "test.tsv",
         "--decoding", "greedy"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=400)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert (elsewhere / "saved_models" / "ko-en-small" / "model.keras").is_file()
    assert "Test BLEU" in trained.stdout
