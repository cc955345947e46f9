"""The benchmark scripts run end to end with `--quick` and write every section with positive numbers (no timing
assertions: the tiny sizes of --quick make the figures meaningless); the FLOP count of a training step matches a
hand calculation; `--exports` and `--engines` refuse to run without `--run-dir`."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from flops import training_step_flops  # noqa: E402

from keras_transformer.config import TransformerConfig  # noqa: E402


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def run_script(script, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def run_quick(script, out, *args):
    """Runs `bench/<script> --quick --out <out> [args]`; returns the finished process and the JSON it wrote."""
    completed = run_script(script, "--quick", "--out", str(out), *args)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    return completed, json.loads(out.read_text())


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """One `bench.py --quick --engines` run: every default section and the engines section, in one process."""
    return run_quick("bench.py", tmp_path_factory.mktemp("bench") / "results.json", "--engines")


def test_bench_quick_writes_all_sections(quick_bench):
    completed, results = quick_bench
    assert {"meta", "machine", "training", "decoding", "end_to_end"} <= set(results)

    for row in results["machine"]["matmul"].values():
        assert row["float32"] > 0 and row["bfloat16"] > 0
    cpu = results["machine"]["cpu"]
    assert cpu["cpu_model"] and cpu["cpus"] > 0 and isinstance(cpu["amx_bf16"], bool) and isinstance(cpu["avx512_bf16"], bool)

    training = results["training"]["results"]
    assert any(name.startswith("keras-hub") for name in training) and any(name.startswith("ours") for name in training)
    for row in training.values():
        assert row["target_tokens_per_s"] > 0 and row["step_ms"] > 0 and row["peak_rss_mb"] > 0
        assert row["parameters"] > 0 and row["ratio_vs_keras_hub_float32"] > 0
        assert row["achieved_gflop_per_s"] > 0 and row["share_of_bf16_matmul_rate"] > 0
    assert results["training"]["step_gflop"] > 0
    # ours packs tokens by default: it executes fewer matmuls than the padded batch holds
    packed, padded = training["ours mixed_bfloat16"], training["ours mixed_bfloat16, no token packing"]
    assert 0 < packed["executed_gflop_per_step"] < results["training"]["step_gflop"]
    assert 0 < packed["executed_gflop_per_s"] < packed["achieved_gflop_per_s"]
    assert "executed_gflop_per_s" not in padded and "executed_gflop_per_s" not in training["keras-hub float32"]
    assert 0 < packed["real_source_share"] < 1 and 0 < packed["real_target_share"] < 1

    decoding = results["decoding"]
    assert any(name.startswith("keras-hub") for name in decoding["results"])
    for per_batch in decoding["results"].values():
        assert set(per_batch) == {str(b) for b in decoding["batches"]}
        for row in per_batch.values():
            assert row["ms_per_token"] > 0 and row["tokens_per_s"] > 0
    for ratios in decoding["ratios"].values():
        assert all(r > 0 for r in ratios.values())
    # a mixed_bfloat16 model decoded in its own precision and with the Translator's default (float32 weights)
    assert "mixed_bfloat16 model, Translator default vs decode_precision=model (speedup)" in decoding["ratios"]

    e2e = results["end_to_end"]["results"]
    assert len(e2e) == 2  # bucketing (default), no bucketing; + XLA fusion needs a process of its own, not in --quick
    for row in e2e.values():
        assert row["target_tokens_per_s"] > 0 and 0 < row["measured_padding_share"] < 1
        assert 0 <= row["dataset_padding_share"] < 1
    first = next(iter(e2e.values()))
    assert first["ratio_vs_no_bucketing"] > 0

    assert all(math.isfinite(x) and x >= 0 for x in _numbers({k: v for k, v in results.items() if k != "meta"}))
    assert "| configuration |" in completed.stdout  # the markdown table
    assert f"Host `{cpu['host']}`" in completed.stdout and "share of bf16 matmul" in completed.stdout


def test_bench_exports_needs_a_run_directory(tmp_path):
    completed = run_script("bench.py", "--exports", "--out", str(tmp_path / "results.json"))
    assert completed.returncode == 2 and "--exports needs --run-dir" in completed.stderr
    completed = run_script("bench.py", "--sections", "exports", "--run-dir", str(tmp_path / "missing"))
    assert completed.returncode == 2 and "does not exist" in completed.stderr
    assert not (tmp_path / "results.json").exists()


def test_bench_quick_engines_compares_ours_with_ctranslate2(quick_bench):
    """`--quick --engines` without --run-dir (an untrained tiny mixed_bfloat16 model, nothing trained): a row per
    engine, precision, decoding and batch with a positive speed, and CTranslate2 float32 greedy decodes exactly what
    our float32 greedy loop decodes on the same test sentences."""
    completed, results = quick_bench
    engines = results["engines"]
    rows = engines["results"]
    with_ct2 = importlib.util.find_spec("ctranslate2") is not None
    expected = [("ours (XLA loop)", "float32"), ("ours (XLA loop)", "mixed_bfloat16"), ("ours (XLA loop)", "int8")]
    expected += [("CTranslate2", "float32"), ("CTranslate2", "int8")] if with_ct2 else []
    assert list(rows) == [
        f"{engine}, {precision}, {decoding}, batch {batch}"
        for engine, precision in expected
        for decoding in ("greedy", "beam 4")
        for batch in (1, 32)
    ]
    assert engines["model"] == "untrained tiny model (no --run-dir)" and engines["model_precision"] == "mixed_bfloat16"
    for row in rows.values():
        assert row["sentences_per_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["sentences"] == engines["sentences"]["batch1" if row["batch"] == 1 else "batch32"]
    ours_greedy = [rows[f"ours (XLA loop), float32, greedy, batch {b}"] for b in (1, 32)]
    assert all(row["distinct_outputs"] > 1 for row in ours_greedy)  # varied outputs: the equality below means something
    if with_ct2:
        for batch in (1, 32):
            assert rows[f"CTranslate2, float32, greedy, batch {batch}"]["same_output_as_ours_float32"] is True
            assert rows[f"ours (XLA loop), float32, greedy, batch {batch}"]["ratio_vs_ct2_float32"] > 0
        assert engines["ct2_export_size_mb"]["int8"] < engines["ct2_export_size_mb"]["float32"]
    else:
        assert "No CTranslate2 rows" in engines["note"]
    assert "| engine, precision, decoding, batch |" in completed.stdout


def test_bench_engines_needs_a_run_directory(tmp_path):
    completed = run_script("bench.py", "--engines", "--out", str(tmp_path / "results.json"))
    assert completed.returncode == 2 and "--engines needs --run-dir" in completed.stderr
    assert not (tmp_path / "results.json").exists()


def test_training_step_flops_matches_a_hand_count():
    """1 layer each side, d_model 4, dff 8, target vocabulary 10, batch 2, source length 3, target length 5."""
    config = TransformerConfig(num_layers=1, d_model=4, num_heads=2, dff=8, src_vocab_size=7, tgt_vocab_size=10, max_length=8)
    # Per sentence, 2*m*k*n FLOPs for each [m, k] x [k, n] matmul; S = 3, T = 5, d = 4, f = 8, V = 10.
    encoder = (
        4 * (2 * 3 * 4 * 4)  # Q, K, V and output projections: 4 x [3, 4] x [4, 4] = 384
        + 2 * (2 * 3 * 3 * 4)  # scores [3, 4] x [4, 3] and weighted sum [3, 3] x [3, 4], over all heads: 144
        + (2 * 3 * 4 * 8) + (2 * 3 * 8 * 4)  # feed-forward [3, 4] x [4, 8], then [3, 8] x [8, 4]: 384
    )
    assert encoder == 912
    decoder = (
        4 * (2 * 5 * 4 * 4) + 2 * (2 * 5 * 5 * 4)  # self-attention: 640 + 400
        + 2 * (2 * 5 * 4 * 4)  # cross-attention Q and output projections over the target: 320
        + 2 * (2 * 3 * 4 * 4)  # cross-attention K and V projections over the encoder output: 192
        + 2 * (2 * 5 * 3 * 4)  # cross scores [5, 4] x [4, 3] and weighted sum [5, 3] x [3, 4]: 240
        + (2 * 5 * 4 * 8) + (2 * 5 * 8 * 4)  # feed-forward: 640
    )
    assert decoder == 2432
    output_projection = 2 * 5 * 4 * 10  # [5, 4] x [4, 10] = 400
    forward = 2 * (encoder + decoder + output_projection)  # batch of 2: 7,488
    assert training_step_flops(config, batch=2, source_len=3, target_len=5) == 3 * forward == 22464  # + backward 2x
    # The reference config of bench/README.md: about 178 GFLOP per step.
    reference = TransformerConfig(num_layers=4, d_model=256, num_heads=8, dff=1024, src_vocab_size=8000, tgt_vocab_size=8000)
    assert round(training_step_flops(reference, batch=64, source_len=48, target_len=48) / 1e9) == 178
    # Token packing: the position-wise matmuls over 4 real source and 7 real target positions of the batch (of 6 and
    # 10 padded ones); attention scores and the output projection stay padded.
    packed_encoder = 4 * (4 * 2 * 4 * 4 + 2 * 2 * 4 * 8) + 2 * 2 * (2 * 3 * 3 * 4)  # 4 rows x 256, + scores 288
    packed_decoder = (
        7 * (4 * 2 * 4 * 4) + 2 * 2 * (2 * 5 * 5 * 4)  # self-attention projections on 7 rows, scores padded
        + 7 * (2 * 2 * 4 * 4) + 4 * (2 * 2 * 4 * 4) + 2 * 2 * (2 * 5 * 3 * 4)  # cross Q/O, K/V, scores
        + 7 * (2 * 2 * 4 * 8)  # feed-forward
    )
    packed_forward = packed_encoder + packed_decoder + 2 * output_projection
    assert packed_forward == 1312 + 3776 + 800
    assert training_step_flops(config, batch=2, source_len=3, target_len=5, source_tokens=4, target_tokens=7) == 3 * packed_forward


def test_levers_quick_runs_the_library_settings(tmp_path):
    """`bench/levers.py --quick` trains the library's in-process settings interleaved and reports ratios."""
    completed, results = run_quick("levers.py", tmp_path / "levers.json")
    rows = results["results"]
    assert list(rows) == ["library defaults", "no accuracy metric", "no token packing"]  # XLA flags and threads need their own process
    assert rows["library defaults"]["ratio_vs_baseline"] == 1.0
    assert all(row["target_tokens_per_s"] > 0 and math.isfinite(row["final_loss"]) for row in rows.values())
    assert "| library defaults |" in completed.stdout


def test_precision_benchmark_quick_compares_both_runs(tmp_path):
    """`bench/precision.py --quick` trains once per precision with the same settings and reports dev BLEU for each."""
    completed, results = run_quick("precision.py", tmp_path / "precision.json")
    assert set(results["runs"]) == {"mixed_bfloat16", "float32"}
    for row in results["runs"].values():
        assert row["steps"] == 2 and len(row["dev_bleu_per_epoch"]) == 1 and row["training_seconds"] > 0
        assert all(math.isfinite(x) for x in row["loss_per_epoch"])
    bf16, fp32 = (results["runs"][p]["dev_bleu_per_epoch"][-1] for p in ("mixed_bfloat16", "float32"))
    assert results["final_dev_bleu_difference_bf16_minus_fp32"] == round(bf16 - fp32, 2)
    assert results["within_0.5_bleu"] == (bf16 >= fp32 - 0.5)
    assert "final dev BLEU" in completed.stdout
