"""Where the time of one training step goes: tf.profiler trace of a few steps, aggregated by TF op type.

    python bench/profile_step.py [--impl ours|hub] [--precision mixed_bfloat16] [--top 30] [--quick]

Uses the model builders and batches of the benchmarks (bench/harness.py, reference config). Prints self time per op type
(and per op name with --by-name), as a share of the profiled device time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", default="ours")
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--by-name", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import harness

    spec = dict(model=harness.QUICK if args.quick else harness.REFERENCE, impl=args.impl, precision=args.precision, jit=args.jit, seed=0)
    tf = harness.setup_tf(spec)
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    model = harness.build_training_model(spec)
    m = spec["model"]
    batches = harness.random_batches(2, m["batch"], m["length"], m["vocab"], seed=0)
    tensors = [({k: tf.constant(v) for k, v in x.items()}, tf.constant(y)) for x, y in batches]
    for i in range(4):
        model.train_on_batch(*tensors[i % 2])
    logdir = tempfile.mkdtemp(prefix="profile-")
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    for i in range(args.steps):
        model.train_on_batch(*tensors[i % 2])
    wall = time.perf_counter() - t0
    tf.profiler.experimental.stop()
    paths = [str(p) for p in Path(logdir).rglob("*.xplane.pb")]
    data, _ = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    table = json.loads(data)
    if isinstance(table, list):
        table = table[0]
    columns = [c["id"] if isinstance(c, dict) else c for c in table["cols"]]
    rows = [[cell.get("v") if isinstance(cell, dict) else cell for cell in r["c"]] for r in table["rows"]]
    ci = {c: i for i, c in enumerate(columns)}
    key = "operation" if args.by_name else "type"
    self_col = "total_self_time"
    totals = collections.Counter()
    counts = collections.Counter()
    for r in rows:
        if r[ci["host_or_device"]] not in ("Device", "Host"):
            continue
        if r[ci["type"]] in ("IDLE",):
            continue
        totals[r[ci[key]]] += float(r[ci[self_col]])
        counts[r[ci[key]]] += int(r[ci["occurrences"]])
    total = sum(totals.values())
    print(f"{args.impl} {args.precision} jit={args.jit}: {args.steps} steps in {wall:.2f} s "
          f"({1000 * wall / args.steps:.0f} ms/step); profiled op self time {total / 1e3 / args.steps:.0f} ms/step")
    print(f"| {key} | ms/step | share | calls/step |\n|---|---|---|---|")
    for name, us in totals.most_common(args.top):
        print(f"| {name} | {us / 1e3 / args.steps:.1f} | {us / total:.1%} | {counts[name] / args.steps:.0f} |")


if __name__ == "__main__":
    main()
