#!/usr/bin/env python
"""Training settings of the current library, A/B in one interleaved group: XLA fusion, the accuracy metric, threads.

    python bench/levers.py [--quick] [--repeats 5] [--precision mixed_bfloat16] [--out levers-run.json]

Every row trains the reference config (bench/harness.py, REFERENCE) with the library as it is; rows differ only in
settings a user can choose, so nothing here patches the library. Ratios are against the first row of the same run.
`--quick`: tiny sizes inside this process (settings that need a process of their own, the XLA flags and the thread
counts, are left out); for tests, its numbers mean nothing. Nothing is written without `--out`.

bench/levers.json holds the A/B of the library's performance levers, and of variants that were tried and not
kept: each timed against the code without it, interleaved (reference config, mixed_bfloat16, on an Intel CPU with
AMX-BF16, 2026-11-25; ratios within a group of that file). The code of those variants is not kept here (this file's git
history has it). One line each:

Kept in the library:
- token packing (`layers/token_packing.py`): in training, every layer's projections, feed-forward, dropout, residual
  adds and LayerNorms run on the real tokens only, attention scores in the padded layout: 1.27x and 1.24x in two
  interleaved A/Bs against `packing=False` (2,618 vs 2,054 and 2,417 vs 1,935 target tokens/s; AMD EPYC 2-core
  host with AVX512-BF16, no AMX, 2026-12-04; about 58% of the reference batches' positions are real). Packing only
  the feed-forward layers had measured 3%, and the output projection with the loss 6%: most of the gain is the
  many small position-wise ops, not one big matmul.
- loss: `losses.smoothed_cross_entropy`, logsumexp with a hand-written gradient instead of autodiff of log_softmax +
  take_along_axis (whose gradient is a scatter-add into a dense [batch, length, vocab] tensor): 1.206x with all
  levers vs 1.091x without this one.
- attention dropout: drawn on the float32 attention weights, then cast to the compute dtype, instead of a Dropout
  layer on the bfloat16 weights: 1.206x vs 1.196x without it.
- embedding: `TokenEmbedding` gathers rows of the float32 table and casts them (autocast off) instead of casting
  the whole table to bfloat16 every step: 1.206x vs 1.214x without it (noise).
- accuracy: `MaskedAccuracy` calls tf.argmax directly (keras.ops.argmax casts the logits to float32 and rewrites
  -0.0 first): 9-13% of a step in this script's A/B against the code without it, a later run whose rows are not
  in levers.json.
- the loss, attention-dropout and embedding levers together against none: 1.206x (2,643 vs 2,191 target
  tokens/s).

Tried, not kept:
- XLA auto-clustering of the fusible ops: 1.22x, for 16-90 s more start-up; opt-in as `train --xla-fusion`.
- fused QKV / KV projections (one matmul with the kernels side by side): 1.038x.
- dropout masks from 16-bit halves of 32-bit random integers (half the Philox draws; 1.2M attention weights in
  2.3 instead of 4.1 ms alone): 1.00x in the step (2,775 vs 2,777 target tokens/s, AMD AVX512-BF16 host,
  2026-12-04, with token packing). The profile's 10% for dropout's random numbers runs beside the matmuls on the
  second core, off the step's critical path.
- attention scores, mask and softmax in bfloat16 instead of float32: 1.019x.
- attention of a single query as multiply + reduce in float32 (incremental decoding): not in levers.json.
- thread counts intra 2 / inter 1 and 1 / 1 instead of TensorFlow's defaults: 0.879x and 0.598x.
- no accuracy metric: 1.094x (without the accuracy lever); the metric stays for the training logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import harness

# name -> what differs from the library's defaults; "process" marks settings that take a process of their own.
VARIANTS = {
    "library defaults": dict(),
    "+ XLA fusion (train --xla-fusion)": dict(env=harness.XLA_FUSION_ENV, process=True),
    "no accuracy metric": dict(metrics=False),
    "no token packing": dict(packing=False),
    "threads intra 2 / inter 1": dict(threads="2,1", process=True),
    "threads intra 1 / inter 1": dict(threads="1,1", process=True),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in this process (for tests)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed repeat")
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--out", default=None, help="JSON file for the results (default: none)")
    args = parser.parse_args(argv)
    names = [n for n, v in VARIANTS.items() if not (args.quick and v.get("process"))]
    base = dict(model=harness.QUICK if args.quick else harness.REFERENCE, steps=1 if args.quick else args.steps,
                warmup=1 if args.quick else 3, seed=0, impl="ours", precision=args.precision, jit=False, threads=None)
    specs = [{**base, **{k: v for k, v in VARIANTS[name].items() if k != "process"}, "name": name} for name in names]
    raw = harness.interleaved(specs, harness.train_worker, 1 if args.quick else args.repeats, in_process=args.quick)
    rows = harness.summarize_training(raw, baseline=names[0])
    lines = [f"| variant ({args.precision}) | target tok/s | step ms | vs {names[0]} | final loss |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['target_tokens_per_s']:,.0f} | {row['step_ms']:.0f} | {row['ratio_vs_baseline']:.3f}x | "
            f"{row['final_loss']:.4f} |"
        )
    print("\n".join(lines))
    if args.out:
        out = {"precision": args.precision, "model": base["model"], "machine": harness.describe_machine(), "results": rows}
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
