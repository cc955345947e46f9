"""scripts/typhoon.py (the non-text example) runs end to end and beats the majority-class baseline."""

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "typhoon.py"


def parse_results(stdout):
    return {name: float(value) for name, value in re.findall(r"^(\w+): ([0-9.]+)$", stdout, flags=re.MULTILINE)}


def test_typhoon_script_beats_majority_baseline():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--samples", "1024", "--epochs", "8", "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    results = parse_results(result.stdout)
    print({k: v for k, v in results.items()})
    for name in ("majority_baseline_accuracy", "teacher_forced_accuracy", "free_running_accuracy"):
        assert name in results, result.stdout[-2000:]
        assert 0.0 <= results[name] <= 1.0
    baseline = results["majority_baseline_accuracy"]
    # The rule makes about a third of the days typhoon days: the baseline is "always no", about 2/3.
    assert 0.55 < baseline < 0.8
    assert results["teacher_forced_accuracy"] > baseline + 0.05, results
    assert results["free_running_accuracy"] > baseline + 0.05, results
