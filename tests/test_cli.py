"""The command line: flags come from the settings and the decoding registry, and each decoding refuses what it
does not take."""

import dataclasses
import os
import subprocess
import sys

import pytest

from keras_transformer import cli
from keras_transformer.config import TrainingConfig

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "keras_transformer", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_every_training_setting_is_a_flag_with_its_default_in_the_help():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    help_text = train.format_help()
    flags = {action.dest: action for action in train._actions}
    for field in dataclasses.fields(TrainingConfig):
        if field.name == "model_overrides":
            continue
        assert field.name in flags, field.name
        assert f"(default {field.default})" in " ".join(help_text.split()), field.name
    assert tuple(flags["precision"].choices) == ("auto", "float32", "mixed_bfloat16", "mixed_float16")
    args = parser.parse_args(["train", "--time-limit", "3", "--jit", "--preset", "tiny"])
    settings = cli.settings_from_args(args)
    assert (settings.time_limit_minutes, settings.jit_compile, settings.preset, settings.epochs) == (3.0, True, "tiny", 100)


def test_max_length_is_one_setting():
    with pytest.raises(ValueError, match="max_length is one setting"):
        TrainingConfig(model_overrides={"max_length": 32})
    assert TrainingConfig(preset="base", max_length=48).model_config(10, 10).max_length == 48


def test_translate_and_evaluate_take_the_options_of_their_decoding(tiny_run_dir, tmp_path):
    beam = run("translate", "--model", str(tiny_run_dir), "--beam-size", "4", "설정", "파일을 열 수 없습니다")
    assert beam.returncode == 0, beam.stderr[-2000:]
    assert len(beam.stdout.splitlines()) == 2
    from keras_transformer.translator import Translator

    expected = Translator.load(tiny_run_dir).translate(["설정", "파일을 열 수 없습니다"], decoding="beam", beam_size=4)
    assert beam.stdout.splitlines() == expected
    wrong = run("translate", "--model", str(tiny_run_dir), "--decoding", "greedy", "--top-k", "3", "설정")
    assert wrong.returncode == 2 and "greedy decoding does not take top_k" in wrong.stderr and "Traceback" not in wrong.stderr
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("설정\tSettings\n파일을 열 수 없습니다\tCannot open the file\n", encoding="utf-8")
    evaluated = run("evaluate", "--model", str(tiny_run_dir), "--data", str(pairs), "--beam-size", "3", "--alpha", "0.2",
                    "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    import json

    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["decoding"] == {"name": "beam", "beam_size": 3, "alpha": 0.2}
