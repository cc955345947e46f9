"""The command line: flags come from the settings and the decoding registry, and each decoding refuses what it
does not take."""

import dataclasses
import json

import pytest

from conftest import cli_in_process
from keras_transformer import cli
from keras_transformer.config import TrainingConfig


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


def test_the_main_job_decodes_with_its_default_unless_told_otherwise():
    parser = cli.build_parser()

    def decoding(*flags):
        return cli._decoding_from_args(parser.parse_args(["train", *flags]))

    assert decoding() == cli.MAIN_JOB_DECODING
    assert decoding("--decoding", "greedy") == ("greedy", {})
    assert decoding("--beam-size", "1") == ("greedy", {})
    assert decoding("--alpha", "0.2") == ("beam", {**cli.MAIN_JOB_DECODING[1], "alpha": 0.2})
    assert decoding("--seed", "3") == cli.MAIN_JOB_DECODING  # the training seed, not sampling's
    with pytest.raises(ValueError, match="greedy decoding does not take alpha"):
        decoding("--decoding", "greedy", "--alpha", "0.2")
    # translate and evaluate keep greedy as their default.
    assert cli._decoding_from_args(parser.parse_args(["evaluate", "--model", "m"])) == ("greedy", {})


def test_max_length_is_one_setting():
    with pytest.raises(ValueError, match="max_length is one setting"):
        TrainingConfig(model_overrides={"max_length": 32})
    assert TrainingConfig(preset="base", max_length=48).model_config(10, 10).max_length == 48


def test_translate_and_evaluate_take_the_options_of_their_decoding(tiny_run_dir, tmp_path):
    beam = cli_in_process("translate", "--model", str(tiny_run_dir), "--beam-size", "4", "설정", "파일을 열 수 없습니다")
    assert beam.returncode == 0, beam.stderr[-2000:]
    assert len(beam.stdout.splitlines()) == 2
    from keras_transformer.translator import Translator

    expected = Translator.load(tiny_run_dir).translate(["설정", "파일을 열 수 없습니다"], decoding="beam", beam_size=4)
    assert beam.stdout.splitlines() == expected
    wrong = cli_in_process("translate", "--model", str(tiny_run_dir), "--decoding", "greedy", "--top-k", "3", "설정")
    assert wrong.returncode == 2 and "greedy decoding does not take top_k" in wrong.stderr and "Traceback" not in wrong.stderr
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("설정\tSettings\n파일을 열 수 없습니다\tCannot open the file\n", encoding="utf-8")
    evaluated = cli_in_process("evaluate", "--model", str(tiny_run_dir), "--data", str(pairs), "--beam-size", "3", "--alpha", "0.2",
                    "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    import json

    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["decoding"] == {"name": "beam", "beam_size": 3, "alpha": 0.2}
    assert report["decode_precision"] == "float32"  # "auto" on a CPU


def test_precision_flag_decodes_a_run_directory_in_int8_and_is_refused_for_an_export(tiny_run_dir, tmp_path):
    from keras_transformer.translator import Translator

    sources = ["설정", "파일을 열 수 없습니다", "어제 카페 갔었어 거기 사람 많더라"]
    int8 = cli_in_process("translate", "--model", str(tiny_run_dir), "--precision", "int8", *sources)
    assert int8.returncode == 0, int8.stderr[-2000:]
    assert int8.stdout.splitlines() == Translator.load(tiny_run_dir, decode_precision="int8").translate(sources)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("설정\tSettings\n파일을 열 수 없습니다\tCannot open the file\n", encoding="utf-8")
    evaluated = cli_in_process("evaluate", "--model", str(tiny_run_dir), "--data", str(pairs), "--precision", "int8",
                               "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["decode_precision"] == "int8"
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"not read: refused before loading")
    refused = cli_in_process("translate", "--model", str(tflite), "--precision", "int8", "설정")
    assert refused.returncode == 2 and "decodes in the precision it was exported in" in refused.stderr
    assert "Traceback" not in refused.stderr


def _synthetic_pairs(count, seed):
    """German-like source sentences and their English translations, built from a small word table, some with
    placeholders: another language pair in another script than the bundled corpus."""
    import random

    words = {"haus": "house", "katze": "cat", "datei": "file", "fenster": "window", "ordner": "folder", "bild": "picture",
             "groß": "big", "klein": "small", "neu": "new", "alt": "old", "öffnen": "open", "schließen": "close"}
    nouns, adjectives, verbs = list(words)[:6], list(words)[6:10], list(words)[10:]
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        noun, adjective, verb = rng.choice(nouns), rng.choice(adjectives), rng.choice(verbs)
        tail = rng.choice(["", " %s", " %1"])
        pairs.append((f"{words[verb]} the {words[adjective]} {words[noun]}{tail}", f"das {adjective}e {noun} {verb}{tail}"))
    return pairs


def test_bring_your_own_language_pair_with_swapped_columns(tmp_path):
    """`train --train my.tsv --dev my_dev.tsv --source-column 1 --target-column 0` on a German->English pair: small
    data gets a vocabulary that fits (with a warning), the report and the sample translations come from the
    user's own dev file, never the bundled Korean sentences; evaluating it on Korean text warns about the columns."""
    for name, count, seed in (("my.tsv", 800, 0), ("my_dev.tsv", 40, 1)):
        # English in column 0, German in column 1: the source is column 1.
        (tmp_path / name).write_text("".join(f"{en}\t{de}\n" for en, de in _synthetic_pairs(count, seed)), encoding="utf-8")
    runs = tmp_path / "runs"
    out = cli_in_process("train", "--runs-dir", str(runs), "--run-name", "de-en", "--train", str(tmp_path / "my.tsv"),
              "--dev", str(tmp_path / "my_dev.tsv"), "--source-column", "1", "--target-column", "0", "--preset", "tiny",
              "--steps-per-epoch", "30", "--epochs", "2", "--dev-bleu-sentences", "20", "--tokens-per-batch", "1024",
              "--warmup-steps", "20", "--lr-scale", "0.3", "--time-limit", "5")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "does not fit these 800 sentences" in out.stderr  # 8,000 pieces asked for, fewer trained
    assert "Dev BLEU" in out.stdout and (runs / "de-en" / "eval-dev" / "report.json").exists()
    assert "어제" not in out.stdout and "das " in out.stdout  # samples from the user's dev file
    from keras_transformer.data import load_bundled_corpus

    dev = load_bundled_corpus("dev").head(30)  # Korean sources: this model's source side is German
    korean_pairs = tmp_path / "korean.tsv"
    korean_pairs.write_text("".join(f"{s}\t{t}\n" for s, t in zip(dev.sources, dev.targets)), encoding="utf-8")
    korean = cli_in_process("evaluate", "--model", str(runs / "de-en"), "--data", str(korean_pairs), "--out", str(tmp_path / "ko"))
    assert korean.returncode == 0, korean.stderr[-2000:]
    assert "may be in the wrong language" in korean.stderr and "--source-column" in korean.stderr
