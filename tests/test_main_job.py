"""The main job end to end through the command line, at a tiny scale: evaluate, translate, plot and export a run
that `train` made (the shared killed-and-resumed run of conftest); and the errors a user meets with bad input."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI_ENV as ENV, cli_in_process, train_command

TINY_RUN = [
    "--preset", "tiny", "--train-limit", "3000", "--source-vocab-size", "1500", "--target-vocab-size", "1000",
    "--steps-per-epoch", "15", "--dev-bleu-sentences", "40", "--warmup-steps", "30", "--lr-scale", "0.1",
    "--tokens-per-batch", "1024",
    "--time-limit", "10",
]


def cli(*args):
    """`keras-transformer ARGS` in a process of its own (for what must fail before TensorFlow is imported)."""
    return subprocess.run([sys.executable, "-m", "keras_transformer", *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def trained_run(killed_run):
    """The shared command-line run of conftest (killed at five points and resumed to 3 epochs; the kills and the
    resume are checked in test_run_directory)."""
    assert killed_run["results"][-1]["returncode"] == 0, killed_run["results"][-1]["output"]
    return killed_run["run_dir"]


def test_help_is_fast_and_does_not_import_tensorflow():
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "keras_transformer", "train", "--help"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0 and "--time-limit" in out.stdout
    assert time.time() - started < 5
    probe = "import sys; from keras_transformer import cli; cli.build_parser(); print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_restart_with_different_settings_is_refused_without_writing(trained_run):
    run_dir = trained_run
    before = sorted(p.name for p in run_dir.iterdir())
    config_before = (run_dir / "config.json").read_text()
    out = cli_in_process(*train_command(run_dir.parent, 3)[3:], "--set", "num_layers=3")
    assert out.returncode == 2
    assert "different settings" in out.stderr and "model.num_layers" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert (run_dir / "config.json").read_text() == config_before


def test_evaluate_translate_and_plot(trained_run, tmp_path):
    run_dir = trained_run
    pairs = tmp_path / "pairs.tsv"  # the user's own parallel file: korean<TAB>english, 60 lines
    from keras_transformer.data import load_bundled_corpus

    dev = load_bundled_corpus("dev").head(60)
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in zip(dev.sources, dev.targets)), encoding="utf-8")
    out = cli_in_process("evaluate", "--model", str(run_dir), "--data", str(pairs), "--out", str(tmp_path / "eval"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["sentences"] == 60 and 0.0 <= report["bleu"] <= 100.0 and "chrf" in report
    assert len((tmp_path / "eval" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()) == 60

    from_args = cli_in_process("translate", "--model", str(run_dir), "설정", "파일을 열 수 없습니다")
    assert from_args.returncode == 0, from_args.stderr
    assert len(from_args.stdout.splitlines()) == 2
    from_stdin = cli_in_process("translate", "--model", str(run_dir), stdin="설정\n\n파일을 열 수 없습니다\n")
    assert from_stdin.stdout == from_args.stdout  # blank lines are skipped, same translations
    source_file = tmp_path / "sources.txt"
    source_file.write_text("설정\n파일을 열 수 없습니다\n", encoding="utf-8")
    assert cli_in_process("translate", "--model", str(run_dir), "--file", str(source_file)).stdout == from_args.stdout

    plots = cli_in_process("plot", "all", "--model", str(run_dir), "--out", str(tmp_path / "plots"))
    assert plots.returncode == 0, plots.stderr
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert {"positional_encoding.png", "learning_rate.png", "training_curves.png"} <= set(names)
    assert any(name.startswith("cross_attention") for name in names)


def test_the_readme_main_job_exports_both_artefacts_from_the_command_line(trained_run, tmp_path):
    """The README's main job ends with `export --format saved_model` and `export --format tflite --quantize dynamic`:
    TF Serving's layout, a .tflite file with the tokenizers beside it, and both translate like the run directory."""
    run_dir, exports = trained_run, tmp_path / "exports"
    for fmt in (["--format", "saved_model"], ["--format", "tflite", "--quantize", "dynamic"]):
        out = cli_in_process("export", "--model", str(run_dir), *fmt, "--out", str(exports))
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (exports / "translator" / "1" / "saved_model.pb").exists()
    assert (exports / "translator.tflite").stat().st_size > 0 and (exports / "translator.source.model").exists()
    sentences = ["설정", "파일을 열 수 없습니다"]
    keras_out = cli_in_process("translate", "--model", str(run_dir), *sentences)
    served = cli_in_process("translate", "--model", str(exports / "translator"), *sentences)
    assert keras_out.returncode == served.returncode == 0, keras_out.stderr[-2000:] + served.stderr[-2000:]
    assert served.stdout == keras_out.stdout and len(served.stdout.splitlines()) == 2
    mobile = cli_in_process("translate", "--model", str(exports / "translator.tflite"), *sentences)  # int8 weights: may differ
    assert mobile.returncode == 0 and len(mobile.stdout.splitlines()) == 2, mobile.stderr[-2000:]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"hello\tworld\n\xff\xfe broken\tline\n", "line 2"),
    ],
    ids=["missing", "empty", "not-utf8"],
)
def test_bad_training_file_gives_a_clear_error_and_no_output(tmp_path, content, message):
    data = tmp_path / "pairs.tsv"
    if content is not None:
        data.write_bytes(content)
    runs = tmp_path / "runs"
    out = cli("train", "--runs-dir", str(runs), "--train", str(data), *TINY_RUN)
    assert out.returncode == 2
    assert message in out.stderr.lower() or message in out.stderr
    assert "Traceback" not in out.stderr
    assert "absl" not in out.stderr  # failed before TensorFlow was even imported
    assert not runs.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--tokens-per-batch", "0"], "tokens_per_batch"),
        (["--set", "num_heads=5"], "num_heads=5 must divide"),
        (["--precision", "float8"], "invalid choice"),
    ],
)
def test_out_of_range_settings_are_refused_before_any_work(tmp_path, args, message):
    out = cli("train", "--runs-dir", str(tmp_path / "runs"), *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "runs").exists()


def test_malformed_lines_are_skipped_with_a_warning_or_refused_with_strict(tmp_path):
    from keras_transformer.data import CorpusError, read_parallel_file

    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\nno tab here\nc\t\nd\te\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="2"):
        corpus = read_parallel_file(data)
    assert corpus.sources == ["a", "d"] and corpus.skipped == 2
    with pytest.raises(CorpusError, match="line 2"):
        read_parallel_file(data, strict=True)


def test_scripts_train_quick_runs_through_the_python_api(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--run-dir", str(tmp_path / "api")],
                         capture_output=True, text=True, env=ENV, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "test BLEU" in out.stdout and "어제 카페 갔었어 거기 사람 많더라 ->" in out.stdout
    assert (tmp_path / "api" / "eval-test" / "report.json").exists()


@pytest.mark.parametrize("fusion", [True, False])
def test_xla_fusion_clusters_element_wise_ops_only_when_on(tmp_path, fusion):
    """`train --xla-fusion` lets XLA fuse element-wise ops (auto-clustering); by default the step is left unclustered.
    XLA's own dump shows which: auto-clustered kernels are named cluster_N."""
    dump = tmp_path / "xla"
    args = ["train", "--runs-dir", str(tmp_path), "--run-name", "fusion", "--no-evaluate", *TINY_RUN,
            "--steps-per-epoch", "3", "--epochs", "1", "--dev-bleu-sentences", "0"]
    if fusion:
        args.append("--xla-fusion")
    env = {k: v for k, v in ENV.items() if k != "TF_XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "keras_transformer", *args], capture_output=True, text=True, timeout=300,
                         env={**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()})  # + conftest's fast-compile flags
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    clusters = [p.name for p in dump.glob("*cluster_*")] if dump.exists() else []
    assert bool(clusters) == fusion, clusters[:3]
    history = json.loads((tmp_path / "fusion" / "history.json").read_text())
    assert np.isfinite(history[-1]["loss"])
