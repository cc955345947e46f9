"""`bench/bench.py --quick` runs end to end and writes every section with positive numbers (no timing assertions:
the tiny sizes of --quick make the figures meaningless)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def run_quick(script, out):
    """Runs `bench/<script> --quick --out <out>`; returns the finished process and the JSON it wrote."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    return completed, json.loads(out.read_text())


def test_bench_quick_writes_all_sections(tmp_path):
    completed, results = run_quick("bench.py", tmp_path / "results.json")
    assert {"meta", "machine", "training", "decoding", "end_to_end"} <= set(results)

    for row in results["machine"]["matmul"].values():
        assert row["float32"] > 0 and row["bfloat16"] > 0

    training = results["training"]["results"]
    assert any(name.startswith("keras-hub") for name in training) and any(name.startswith("ours") for name in training)
    for row in training.values():
        assert row["target_tokens_per_s"] > 0 and row["step_ms"] > 0 and row["peak_rss_mb"] > 0
        assert row["parameters"] > 0 and row["ratio_vs_keras_hub_float32"] > 0

    decoding = results["decoding"]
    assert any(name.startswith("keras-hub") for name in decoding["results"])
    for per_batch in decoding["results"].values():
        assert set(per_batch) == {str(b) for b in decoding["batches"]}
        for row in per_batch.values():
            assert row["ms_per_token"] > 0 and row["tokens_per_s"] > 0
    for ratios in decoding["ratios"].values():
        assert all(r > 0 for r in ratios.values())

    e2e = results["end_to_end"]["results"]
    assert len(e2e) == 3  # bucketing (default), no bucketing, bucketing + XLA fusion
    for row in e2e.values():
        assert row["target_tokens_per_s"] > 0 and 0 < row["measured_padding_share"] < 1
        assert 0 <= row["dataset_padding_share"] < 1
    first = next(iter(e2e.values()))
    assert first["ratio_vs_no_bucketing"] > 0 and first["ratio_vs_xla_fusion"] > 0

    assert all(math.isfinite(x) and x >= 0 for x in _numbers({k: v for k, v in results.items() if k != "meta"}))
    assert "| configuration |" in completed.stdout  # the markdown table


def test_precision_benchmark_quick_compares_both_runs(tmp_path):
    """`bench/precision.py --quick` trains once per precision with the same settings and reports dev BLEU for each."""
    completed, results = run_quick("precision.py", tmp_path / "precision.json")
    assert set(results["runs"]) == {"mixed_bfloat16", "float32"}
    for row in results["runs"].values():
        assert row["steps"] == 5 and len(row["dev_bleu_per_epoch"]) == 1 and row["training_seconds"] > 0
        assert all(math.isfinite(x) for x in row["loss_per_epoch"])
    bf16, fp32 = (results["runs"][p]["dev_bleu_per_epoch"][-1] for p in ("mixed_bfloat16", "float32"))
    assert results["final_dev_bleu_difference_bf16_minus_fp32"] == round(bf16 - fp32, 2)
    assert results["within_0.5_bleu"] == (bf16 >= fp32 - 0.5)
    assert "final dev BLEU" in completed.stdout
