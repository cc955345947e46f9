#!/usr/bin/env python
"""Benchmark of keras-transformer against keras-hub, measured in ONE run on the same machine.

    python bench/bench.py [--quick] [--exports] [--engines] [--run-dir saved_models/ko-en-small] [--out bench/results.json]

The machine is shared (other people's tests run on the same 2 cores), so absolute figures drift from minute to
minute. Every comparison is therefore made inside one run and the timed repeats of the compared configurations are
INTERLEAVED (round robin): each configuration lives in its own worker process (built and warmed up once, which also
gives a clean peak RSS per configuration), and the orchestrator asks the workers in turn for one timed repeat, R
times. Reported figures are medians of those repeats; ratios are taken between medians of the same run. The worker
machinery is in `harness.py`.

Sections (all in the JSON written to --out; a markdown table goes to stdout):
1. `machine`: the host (CPU model, AMX-BF16 / AVX512-BF16) and square matmuls through `tf.function`, float32 and
   bfloat16, GFLOP/s.
2. `training`: target tokens/s (non-pad labels) at the reference config (4+4 layers, d_model 256, 8 heads, dff 1024,
   dropout 0.1, vocabularies 8,000, batch 64, length 48 with random lengths and padding, Adam + warmup schedule +
   masked loss) for keras-hub's TransformerEncoder/Decoder stack (float32, with/without XLA) and for
   keras-transformer (float32 / mixed_bfloat16, with/without XLA), on the same batches; plus peak RSS per config,
   and the fraction of the machine each uses: the step's matmul FLOPs (`flops.py`) per second, as a share of this
   run's bfloat16 matmul rate (section `machine`).
3. `decoding`: greedy decoding, ms per token (whole batch advancing one position, 48 positions forced) at batch 1
   and 32: keras-hub's GreedySampler over a cached next() (self- and cross-attention caches, the way keras-hub's
   BART generates), keras-transformer cached and uncached, and a mixed_bfloat16 model decoded in its own precision
   and with the Translator's default (float32 weights on CPU); all XLA-compiled.
4. `end_to_end`: training on the bundled corpus through `make_dataset`, with and without length bucketing:
   real target tokens/s and padding share.
5. `exports` (only with --exports, which needs --run-dir): decode speed, file sizes and test BLEU of the run
   directory's model as Keras / SavedModel / TFLite.
6. `engines` (only with --engines, which needs --run-dir): sentences/s of the run directory's model on the same
   test sentences, greedy and beam 4, at batch 1 (one sentence per call) and batch 32, for our XLA decode loop
   (float32 weights, and mixed_bfloat16) and for CTranslate2 exports of it (float32, int8); each engine in its
   own worker (peak RSS per engine), the ratio of each row to CTranslate2 float32 at the same decoding and batch,
   and whether its outputs equal ours in float32 (CTranslate2 float32 greedy must).

`--quick` shrinks every size so that the whole run takes well under a minute (for tests; the numbers then mean
nothing; its `exports` and `engines` sections use an untrained tiny model unless --run-dir is given).
`--sections` picks sections (comma separated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import harness
from flops import training_step_flops
from harness import END_ID, PAD_ID, QUICK, REFERENCE, XLA_FUSION_ENV, median, our_config, setup_tf

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------------------
# Sections (orchestrator side, no TensorFlow): each takes the parsed arguments and the sections measured so far
# ----------------------------------------------------------------------------------------------------------------


def section_machine(args, earlier):
    sizes = [64, 128] if args.quick else [1024, 2048]
    spec = {"name": "machine", "sizes": sizes, "repeats": 3 if args.quick else 5, "threads": args.threads}
    result = harness.run_worker_once(machine_worker, spec, args.in_process)
    return {"cpu": harness.describe_machine(), "matmul": result["matmul"]}


def training_specs(args, model):
    steps = 1 if args.quick else args.train_steps
    base = dict(model=model, steps=steps, warmup=1 if args.quick else 3, seed=0, threads=args.threads)
    variants = [
        ("keras-hub float32", dict(impl="hub", precision="float32", jit=False)),
        ("keras-hub float32 XLA", dict(impl="hub", precision="float32", jit=True)),
        ("keras-hub mixed_bfloat16", dict(impl="hub", precision="mixed_bfloat16", jit=False)),
        ("ours float32", dict(impl="ours", precision="float32", jit=False)),
        ("ours mixed_bfloat16", dict(impl="ours", precision="mixed_bfloat16", jit=False)),
        ("ours mixed_bfloat16, no token packing", dict(impl="ours", precision="mixed_bfloat16", jit=False, packing=False)),
        ("ours mixed_bfloat16 + XLA fusion", dict(impl="ours", precision="mixed_bfloat16", jit=False, env=XLA_FUSION_ENV)),
        ("ours mixed_bfloat16 XLA", dict(impl="ours", precision="mixed_bfloat16", jit=True)),
    ]
    if args.quick:  # the two that matter, without XLA compiles, to stay fast
        variants = [v for v in variants if v[0] in ("keras-hub float32", "ours mixed_bfloat16", "ours mixed_bfloat16, no token packing")]
    return [{**base, **v, "name": name} for name, v in variants]


def packs_tokens(spec):
    """Whether a training row runs with our token packing (ours, not switched off, no XLA)."""
    auto_jit = "tf_xla_auto_jit" in spec.get("env", {}).get("TF_XLA_FLAGS", "")
    return spec["impl"] == "ours" and spec.get("packing", True) and not spec["jit"] and not auto_jit


def bf16_matmul_rate(machine):
    """The best bfloat16 square-matmul rate of a `machine` section, GFLOP/s (None without one)."""
    rates = [row["bfloat16"] for row in (machine or {}).get("matmul", {}).values()]
    return max(rates) if rates else None


def significant(x, digits=3):
    return float(f"{x:.{digits}g}")


def section_training(args, earlier):
    model = QUICK if args.quick else REFERENCE
    repeats = 1 if args.quick else args.repeats
    specs = training_specs(args, model)
    rows = harness.summarize_training(harness.interleaved(specs, harness.train_worker, repeats, args.in_process))
    # The matmuls of the padded batch (keras-hub's stack has the same sizes): what a padded implementation must do.
    step_flops = training_step_flops(our_config(model), model["batch"], model["length"], model["length"])
    peak = bf16_matmul_rate(earlier.get("machine"))
    for spec in specs:
        row = rows[spec["name"]]
        row["achieved_gflop_per_s"] = significant(step_flops / (row["step_ms"] / 1000) / 1e9)
        if peak:
            row["share_of_bf16_matmul_rate"] = significant(row["achieved_gflop_per_s"] / peak)
        if packs_tokens(spec):  # the matmuls it actually executes: the position-wise ones over real tokens only
            positions = model["batch"] * model["length"]
            executed = training_step_flops(
                our_config(model), model["batch"], model["length"], model["length"],
                source_tokens=row["real_source_share"] * positions, target_tokens=row["real_target_share"] * positions,
            )  # fmt: skip
            row["executed_gflop_per_step"] = significant(executed / 1e9)
            row["executed_gflop_per_s"] = significant(executed / (row["step_ms"] / 1000) / 1e9)
            if peak:
                row["executed_share_of_bf16_matmul_rate"] = significant(row["executed_gflop_per_s"] / peak)
    return {
        "config": {**model, "steps_per_repeat": specs[0]["steps"], "repeats": repeats, "min_length": max(2, model["length"] // 6)},
        "step_gflop": significant(step_flops / 1e9),
        "bf16_matmul_gflop_per_s": peak,
        "results": rows,
    }


def section_decoding(args, earlier):
    model = QUICK if args.quick else REFERENCE
    spec = dict(
        name="decoding",
        model=model,
        steps=4 if args.quick else 48,
        batches=[2] if args.quick else [1, 32],
        repeats=1 if args.quick else args.repeats,
        threads=args.threads,
        uncached=not args.quick,
        bf16=True,
    )
    return harness.run_worker_once(decode_worker, spec, args.in_process)["decoding"]


def section_end_to_end(args, earlier):
    common = dict(
        quick=args.quick,
        steps=1 if args.quick else 20,
        warmup=0 if args.quick else 30,
        pairs=400 if args.quick else args.e2e_pairs,
        threads=args.threads,
    )
    specs = [
        {**common, "name": "bucketing (default boundaries)", "bucketing": True},
        {**common, "name": "no bucketing (everything padded to max_length)", "bucketing": False},
        {**common, "name": "bucketing + XLA fusion", "bucketing": True, "env": XLA_FUSION_ENV},
    ]
    if args.quick:  # in one process the XLA flags cannot take effect
        specs = specs[:2]
    raw = harness.interleaved(specs, e2e_worker, 1 if args.quick else args.repeats, args.in_process)
    rows = {}
    for name, r in raw.items():
        reps = r["repeats"]
        rows[name] = {
            "target_tokens_per_s": round(median([x["target_tokens"] / x["seconds"] for x in reps]), 1),
            "padded_positions_per_s": round(median([x["positions"] / x["seconds"] for x in reps]), 1),
            "measured_padding_share": round(sum(x["pad_positions"] for x in reps) / sum(x["all_positions"] for x in reps), 3),
            "dataset_padding_share": round(r["ready"]["stats"]["padding_share"], 3),
            "pipeline_only_target_tokens_per_s": r["ready"]["pipeline_only_target_tokens_per_s"],
            "steps_timed": sum(x["steps"] for x in reps),
            "peak_rss_mb": r["final"]["peak_rss_mb"],
        }
    first = next(iter(raw.values()))["ready"]
    names = list(rows)
    if len(names) >= 2:
        rows[names[0]]["ratio_vs_no_bucketing"] = round(
            rows[names[0]]["target_tokens_per_s"] / rows[names[1]]["target_tokens_per_s"], 2
        )
    if len(names) == 3:
        rows[names[0]]["ratio_vs_xla_fusion"] = round(
            rows[names[0]]["target_tokens_per_s"] / rows[names[2]]["target_tokens_per_s"], 2
        )
    return {"config": first["config"], "results": rows}


def section_exports(args, earlier):
    spec = dict(name="exports", quick=args.quick, run_dir=args.run_dir, bleu_sentences=args.bleu_sentences, threads=args.threads)
    return harness.run_worker_once(exports_worker, spec, args.in_process)["exports"]


# The engines, in the order of the table: (engine, precision label, worker spec). CTranslate2 float32 is the
# reference of the ratios, ours float32 the reference of the output comparison.
OURS, CT2 = "ours (XLA loop)", "CTranslate2"
ENGINES = [
    (OURS, "float32", dict(engine="ours", decode_precision="float32")),
    # decode_precision="model" for a run trained in mixed_bfloat16 (the default); named, so that the row is bf16
    # whatever precision the run was trained in.
    (OURS, "mixed_bfloat16", dict(engine="ours", decode_precision="mixed_bfloat16")),
    # Keras' int8 dense layers (TransformerBackbone.int8_copy): our own int8 path.
    (OURS, "int8", dict(engine="ours", decode_precision="int8")),
    (CT2, "float32", dict(engine="ct2", quantize="none")),
    (CT2, "int8", dict(engine="ct2", quantize="int8")),
]
ENGINE_DECODINGS = {"greedy": 1, "beam 4": 4}  # decoding label -> beam size
ENGINES_NOTE = (
    "ours: Translator.translate (sorted by length, batches padded to multiples of 8, decode_shards auto); "
    "CTranslate2: CTranslate2Translator.translate with its default threads (one translator per core, one thread "
    "each); beam 4 ranks with the GNMT length penalty, alpha 0.6, on both."
)


def engine_label(engine, precision, decoding, batch):
    return f"{engine}, {precision}, {decoding}, batch {batch}"


def section_engines(args, earlier):
    n_batch = 8 if args.quick else args.engine_sentences
    n_single = 4 if args.quick else min(args.engine_batch1_sentences, n_batch)
    workloads = [
        dict(key=f"{decoding} | {batch}", decoding=decoding, beam_size=beam, batch=batch, sentences=n_single if batch == 1 else n_batch)
        for decoding, beam in ENGINE_DECODINGS.items()
        for batch in (1, 32)
    ]
    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        prepared = harness.run_worker_once(
            engines_prepare_worker,
            dict(name="engines: prepare", run_dir=args.run_dir, out_dir=str(tmp), quantizations=["none", "int8"], threads=args.threads),
            args.in_process,
        )
        specs = []
        for engine, precision, options in ENGINES:
            if options["engine"] == "ct2":
                if not prepared["ct2_exports"]:
                    continue  # ctranslate2 is not installed (the note says so)
                path = prepared["ct2_exports"][options["quantize"]]
            else:
                path = prepared["run_dir"]
            specs.append({
                **options, "name": f"{engine}, {precision}", "label": (engine, precision), "path": path,
                "workloads": workloads, "threads": args.threads,
            })  # fmt: skip
        raw = harness.interleaved(specs, engine_worker, 1 if args.quick else args.repeats, args.in_process)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": prepared["model"],
        "model_precision": prepared["model_precision"],
        "sentences": {"batch1": n_single, "batch32": n_batch},
        "ct2_export_size_mb": prepared["ct2_sizes_mb"],
        "engine_settings": {name: {k: v for k, v in r["ready"].items() if k != "outputs"} for name, r in raw.items()},
        "results": summarize_engines(raw, specs),
        "note": ENGINES_NOTE + ("" if prepared["ct2_exports"] else f" No CTranslate2 rows: {prepared['ct2_missing']}"),
    }


def summarize_engines(raw, specs):
    """One row per engine and workload: median sentences/s, the worker's peak RSS, the ratio to CTranslate2
    float32 at the same workload, and whether the outputs equal ours in float32 on the same sentences."""
    reference = raw[f"{OURS}, float32"]["ready"]["outputs"]
    rows = {}
    for spec in specs:
        r, (engine, precision) = raw[spec["name"]], spec["label"]
        for workload in spec["workloads"]:
            key = workload["key"]
            rates = [workload["sentences"] / repeat[key] for repeat in r["repeats"]]
            row = {
                "engine": engine,
                "precision": precision,
                "decoding": workload["decoding"],
                "batch": workload["batch"],
                "sentences": workload["sentences"],
                "sentences_per_s": round(median(rates), 2),
                "sentences_per_s_repeats": [round(x, 2) for x in rates],
                "peak_rss_mb": r["final"]["peak_rss_mb"],
                "setup_seconds": r["ready"]["setup_seconds"],
                # one output for every sentence would make the comparison below prove little
                "distinct_outputs": len(set(r["ready"]["outputs"][key])),
            }
            if (engine, precision) != (OURS, "float32"):
                outputs, expected = r["ready"]["outputs"][key], reference[key]
                row["same_output_as_ours_float32"] = outputs == expected
                row["identical_share_vs_ours_float32"] = round(sum(a == b for a, b in zip(outputs, expected)) / len(expected), 3)
            rows[engine_label(engine, precision, workload["decoding"], workload["batch"])] = row
    for row in rows.values():
        baseline = rows.get(engine_label(CT2, "float32", row["decoding"], row["batch"]))
        if baseline is not None and row is not baseline:
            row["ratio_vs_ct2_float32"] = round(row["sentences_per_s"] / baseline["sentences_per_s"], 2)
    return rows


SECTIONS = {
    "machine": section_machine,
    "training": section_training,
    "decoding": section_decoding,
    "end_to_end": section_end_to_end,
    "exports": section_exports,
    "engines": section_engines,
}
# Sections that need --run-dir, each run only when its flag (--exports, --engines) is given or --sections names it.
RUN_DIR_SECTIONS = ("exports", "engines")


def markdown(results):
    out = []
    m = results.get("machine")
    if m:
        cpu = m["cpu"]
        out += [
            "### Machine (square matmul through tf.function)",
            "",
            f"Host `{cpu.get('host', '?')}`: {cpu.get('cpu_model', '?')}, {cpu.get('cpus', '?')} cores, "
            f"{harness.bf16_instructions(cpu)}.",
            "",
            "| n | float32 GFLOP/s | bfloat16 GFLOP/s | bf16/f32 |",
            "|---|---|---|---|",
        ]
        for n, row in m["matmul"].items():
            out.append(f"| {n} | {row['float32']:.0f} | {row['bfloat16']:.0f} | {row['bfloat16'] / row['float32']:.1f}x |")
        out.append("")
    t = results.get("training")
    if t:
        peak = t.get("bf16_matmul_gflop_per_s")
        out += [
            "### Training, reference config (target tokens/s, median of repeats)",
            "",
            f"One step of the padded batch is {t['step_gflop']:,.3g} GFLOP of matmuls (bench/flops.py); with token "
            "packing ours executes fewer (the projections and feed-forward over real tokens only): the last column. "
            f"Shares are of this run's bfloat16 matmul rate ({'-' if peak is None else f'{peak:,.0f} GFLOP/s'}).",
            "",
            "| configuration | target tok/s | step ms | vs keras-hub f32 | vs best keras-hub | padded-batch GFLOP/s (share of bf16 matmul) | executed GFLOP/s (share) | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|",
        ]

        def rate(gflops, share):
            return "-" if gflops is None else f"{gflops:,.3g} ({'-' if share is None else f'{share:.1%}'})"

        for name, row in t["results"].items():
            out.append(
                f"| {name} | {row['target_tokens_per_s']:,.0f} | {row['step_ms']:.0f} | "
                f"{row.get('ratio_vs_keras_hub_float32', float('nan')):.2f}x | {row.get('ratio_vs_best_keras_hub', float('nan')):.2f}x | "
                f"{rate(row['achieved_gflop_per_s'], row.get('share_of_bf16_matmul_rate'))} | "
                f"{rate(row.get('executed_gflop_per_s'), row.get('executed_share_of_bf16_matmul_rate'))} | {row['peak_rss_mb']:,.0f} |"
            )
        out.append("")
    d = results.get("decoding")
    if d:
        out += [
            f"### Greedy decoding, ms per token ({d['steps']} positions forced, XLA)",
            "",
            "| implementation | " + " | ".join(f"batch {b}" for b in d["batches"]) + " |",
            "|---|" + "---|" * len(d["batches"]),
        ]
        for name, row in d["results"].items():
            out.append(f"| {name} | " + " | ".join(f"{row[str(b)]['ms_per_token']:.2f}" for b in d["batches"]) + " |")
        for key, ratios in d.get("ratios", {}).items():
            out.append(f"| ratio: {key} | " + " | ".join(f"{ratios[str(b)]:.2f}x" for b in d["batches"]) + " |")
        out.append("")
    e = results.get("end_to_end")
    if e:
        out += [
            "### End to end on the bundled corpus (ours, training defaults)",
            "",
            "| pipeline | target tok/s | padded positions/s | padding share (measured / dataset) | tf.data alone, target tok/s |",
            "|---|---|---|---|---|",
        ]
        for name, row in e["results"].items():
            out.append(
                f"| {name} | {row['target_tokens_per_s']:,.0f} | {row['padded_positions_per_s']:,.0f} | "
                f"{row['measured_padding_share']:.1%} / {row['dataset_padding_share']:.1%} | "
                f"{row['pipeline_only_target_tokens_per_s']:,.0f} |"
            )
        out.append("")
    x = results.get("exports")
    if x:
        out += [
            f"### Exports of {x['model']}",
            "",
            "| artefact | size MB | ms/sentence, batch 1 | sentences/s, batch 32 | test BLEU |",
            "|---|---|---|---|---|",
        ]
        for name, row in x["results"].items():
            b32 = row.get("sentences_per_s_batch32")
            bleu = row.get("bleu")
            size = "-" if row["size_mb"] is None else f"{row['size_mb']:.1f}"  # None: not a file of its own
            out.append(
                f"| {name} | {size} | {row['ms_per_sentence_batch1']:.1f} | "
                f"{'-' if b32 is None else f'{b32:.1f}'} | {'-' if bleu is None else f'{bleu:.2f}'} |"
            )
        out += [f"\nBLEU on {x['bleu_sentences']} test sentences; {x.get('note', '')}", ""]
    g = results.get("engines")
    if g:
        n = g["sentences"]
        out += [
            f"### Engines on the same test sentences, {g['model']} (sentences/s, median of repeats)",
            "",
            f"Batch 1: the first {n['batch1']} test sentences, one per call; batch 32: the first {n['batch32']}. "
            "Peak RSS is the engine's worker (all its rows)"
            + (", here the whole process (configurations run in one process)." if results.get("meta", {}).get("in_process") else "."),
            "",
            "| engine, precision, decoding, batch | sentences/s | vs CTranslate2 float32 | same output as ours float32 | peak RSS MB |",
            "|---|---|---|---|---|",
        ]
        for name, row in g["results"].items():
            ratio, same = row.get("ratio_vs_ct2_float32"), row.get("identical_share_vs_ours_float32")
            out.append(
                f"| {name} | {row['sentences_per_s']:,.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
                f"{'-' if same is None else f'{same:.0%}'} | {row['peak_rss_mb']:,.0f} |"
            )
        out += [f"\n{g['note']}", ""]
    return "\n".join(out)


def check_run_dir(parser, args, names):
    """`--run-dir` must name a trained model when the exports or engines section runs (--quick may use an untrained
    one)."""
    needing = [name for name in names if name in RUN_DIR_SECTIONS]
    if not needing:
        return
    if args.run_dir is None:
        if not args.quick:
            parser.error(
                f"--{needing[0]} needs --run-dir DIR: the run directory of a trained model (`keras-transformer train` "
                "writes one, e.g. saved_models/ko-en-small), a .keras file or a preset directory."
            )
        return
    path = Path(args.run_dir)
    if not path.exists():
        parser.error(f"--run-dir {path} does not exist.")
    if path.is_dir() and not ((path / "model.keras").is_file() or (path / "metadata.json").is_file()):
        parser.error(f"--run-dir {path} holds no model.keras (nor a preset's metadata.json): has its first epoch finished?")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (numbers mean nothing)")
    parser.add_argument("--exports", action="store_true", help="also run the export section (minutes; needs --run-dir)")
    parser.add_argument(
        "--engines", action="store_true", help="also run the engines section: ours vs CTranslate2 (minutes; needs --run-dir)"
    )
    parser.add_argument(
        "--run-dir", default=None,
        help="the trained model of the exports and engines sections: a run directory of `keras-transformer train`, a "
        ".keras file or a preset",
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--sections", default=None, help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration (interleaved)")
    parser.add_argument("--train-steps", type=int, default=4, help="training steps per timed repeat")
    parser.add_argument("--e2e-pairs", type=int, default=60000, help="training pairs tokenized for the end-to-end section")
    parser.add_argument("--bleu-sentences", type=int, default=500, help="test sentences for the export BLEU (0 = all 2,000)")
    parser.add_argument("--engine-sentences", type=int, default=500, help="test sentences of the engines section at batch 32")
    parser.add_argument(
        "--engine-batch1-sentences", type=int, default=100,
        help="of those, how many the engines section translates at batch 1 (one sentence per call)",
    )
    parser.add_argument("--threads", default=None, help="intra,inter op threads for every worker (default: TF's)")
    parser.add_argument(
        "--in-process", choices=("auto", "yes", "no"), default="auto",
        help="run the configurations inside this process (auto: only with --quick; no clean per-config RSS then)",
    )
    args = parser.parse_args(argv)
    opted_in = {"exports": args.exports, "engines": args.engines}
    names = args.sections.split(",") if args.sections else [s for s in SECTIONS if opted_in.get(s, True)]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    check_run_dir(parser, args, names)

    args.in_process = args.in_process == "yes" or (args.in_process == "auto" and args.quick)
    if args.in_process:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results = {
        "meta": {
            "quick": args.quick,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_start": harness.loadavg(),
            "threads": args.threads,
            "in_process": args.in_process,
        }
    }
    for name in names:
        started = time.time()
        print(f"== {name}", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](args, results)
        results[name]["section_seconds"] = round(time.time() - started, 1)
        results[name]["loadavg_after"] = harness.loadavg()
    results["meta"]["loadavg_end"] = harness.loadavg()
    results["meta"]["versions"] = harness.run_worker_once(versions_worker, {"name": "versions"}, args.in_process)["versions"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Workers (TensorFlow lives here; the training worker is harness.train_worker)
# ----------------------------------------------------------------------------------------------------------------


def versions_worker(spec):
    import keras
    import keras_hub
    import tensorflow as tf

    import keras_transformer

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "keras_hub": keras_hub.__version__}
    return {"ready": {"versions": {**versions, "keras_transformer": keras_transformer.__version__}}}


def machine_worker(spec):
    tf = setup_tf(spec)
    import numpy as np

    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    table = {}
    for n in spec["sizes"]:
        row = {}
        for dtype in ("float32", "bfloat16"):
            a = tf.cast(tf.random.normal((n, n)), dtype)
            b = tf.cast(tf.random.normal((n, n)), dtype)
            iters = max(2, min(200, int(4e9 / (2 * n**3))))  # about 4 GFLOP per repeat
            for _ in range(2):
                matmul(a, b).numpy()
            rates = []
            for _ in range(spec["repeats"]):
                t0 = time.perf_counter()
                for _ in range(iters):
                    c = matmul(a, b)
                c.numpy()
                rates.append(2 * n**3 * iters / (time.perf_counter() - t0) / 1e9)
            row[dtype] = round(float(np.median(rates)), 1)
        table[str(n)] = row
    return {"ready": {"matmul": table}}


def decode_worker(spec):
    tf = setup_tf(spec)
    import keras

    from keras_transformer.model import build_transformer
    from keras_transformer.translator import Translator

    m, steps = spec["model"], spec["steps"]
    keras.utils.set_random_seed(0)
    max_length = max(64, steps + 1)
    config = our_config(m, max_length=max_length)
    ours = build_transformer(config, dtype="float32")
    # Random weights: make END (id 3) never win, so that every position is decoded (no early stop); the compute is
    # unchanged (one bias value).
    bias = ours.output_projection.bias.numpy()
    bias[END_ID] = -1e4
    ours.output_projection.bias.assign(bias)
    translator = Translator(ours, max_output_length=steps)  # decode_shards="auto"
    one_loop = Translator(ours, max_output_length=steps, decode_shards=1)
    names = {
        "hub": "keras-hub GreedySampler, cached (self + cross), XLA",
        "cached": "ours greedy, cached, XLA",
        "one loop": "ours greedy, cached, XLA, one loop (decode_shards=1)",
        "bf16 model": "ours greedy, cached, XLA, mixed_bfloat16 model, decode_precision=model (bfloat16)",
        "bf16 default": "ours greedy, cached, XLA, mixed_bfloat16 model, Translator default (float32 weights on CPU)",
        "uncached": "ours greedy, uncached, XLA",
    }
    hub = harness.HubSeq2Seq(m, max_length=max_length)
    hub_generate = tf.function(lambda ids: hub.generate(ids, steps), input_signature=[tf.TensorSpec([None, None], tf.int32)], jit_compile=True)

    sources = harness.random_batches(1, max(spec["batches"]), m["length"], m["vocab"], seed=1)[0][0]["encoder_inputs"]
    candidates = {
        names["hub"]: lambda ids: hub_generate(tf.constant(ids)).numpy(),
        names["cached"]: lambda ids: translator.translate_ids(ids, "greedy", use_cache=True)[0],
    }
    if translator.decode_shards > 1:  # the same loop, one batch at a time (what batch 1 always gets)
        candidates[names["one loop"]] = lambda ids: one_loop.translate_ids(ids, "greedy")[0]
    if spec.get("bf16", True):
        # A model trained under mixed_bfloat16, decoded in its own precision and with the Translator's default.
        ours_bf16 = build_transformer(config, dtype="mixed_bfloat16")
        ours_bf16.set_weights(ours.get_weights())
        bf16_own = Translator(ours_bf16, max_output_length=steps, decode_precision="model")
        bf16_default = Translator(ours_bf16, max_output_length=steps)
        candidates[names["bf16 model"]] = lambda ids: bf16_own.translate_ids(ids, "greedy")[0]
        candidates[names["bf16 default"]] = lambda ids: bf16_default.translate_ids(ids, "greedy")[0]
    if spec.get("uncached", True):
        candidates[names["uncached"]] = lambda ids: translator.translate_ids(ids, "greedy", use_cache=False)[0]
    inputs = {b: sources[:b] for b in spec["batches"]}
    checks = {}
    for name, fn in candidates.items():
        for b, ids in inputs.items():
            for _ in range(2):
                out = fn(ids)
            checks[f"{name} | {b}"] = {"shape": list(out.shape), "end_tokens": int((out == END_ID).sum())}
            if out.shape[1] != steps:
                raise RuntimeError(f"{name} decoded {out.shape[1]} positions, expected {steps}")
            if name.startswith("ours") and (out == END_ID).any():
                raise RuntimeError(f"{name} stopped early: END was produced")
    times = {name: {b: [] for b in inputs} for name in candidates}
    for _ in range(spec["repeats"]):
        for b, ids in inputs.items():
            for name, fn in candidates.items():
                t0 = time.perf_counter()
                fn(ids)
                times[name][b].append(time.perf_counter() - t0)
    results = {
        name: {
            str(b): {
                "ms_per_token": round(1000 * median(v) / steps, 3),
                "tokens_per_s": round(b * steps / median(v), 1),
                "repeats_ms": [round(1000 * x, 1) for x in v],
            }
            for b, v in per_batch.items()
        }
        for name, per_batch in times.items()
    }

    def speedup(slow, fast):
        return {str(b): round(results[slow][str(b)]["ms_per_token"] / results[fast][str(b)]["ms_per_token"], 2) for b in inputs}

    ratios = {"ours cached vs keras-hub (speedup)": speedup(names["hub"], names["cached"])}
    if names["one loop"] in results:
        ratios["ours cached, decode_shards auto vs 1 (speedup)"] = speedup(names["one loop"], names["cached"])
    if names["bf16 model"] in results:
        ratios["mixed_bfloat16 model, Translator default vs decode_precision=model (speedup)"] = speedup(
            names["bf16 model"], names["bf16 default"]
        )
    if names["uncached"] in results:
        ratios["ours cached vs ours uncached (speedup)"] = speedup(names["uncached"], names["cached"])
    return {
        "ready": {
            "decoding": {
                "steps": steps,
                "batches": spec["batches"],
                "source_length": m["length"],
                "results": results,
                "ratios": ratios,
                "checks": checks,
                "parameters": {"ours": int(ours.count_params()), "keras-hub": int(hub.model.count_params())},
            }
        }
    }


_CACHE = {}


def train_tokenizers(quick, sources, targets):
    """Source and target tokenizers trained on the given texts (8,000 pieces; 1,500 at most for --quick)."""
    from keras_transformer.data.tokenizer import SubwordTokenizer

    size = 1500 if quick else 8000
    options = dict(hard_vocab_limit=False) if quick else {}
    return SubwordTokenizer.train(sources, vocab_size=size, **options), SubwordTokenizer.train(targets, vocab_size=size, **options)


def e2e_worker(spec):
    tf = setup_tf(spec)
    import keras

    from keras_transformer.config import TransformerConfig
    from keras_transformer.data import load_bundled_corpus, make_dataset
    from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_transformer.metrics import MaskedAccuracy
    from keras_transformer.model import build_transformer
    from keras_transformer.optimizers import create_optimizer
    from keras_transformer.training import resolve_precision

    # --quick: the small dev split (the train split takes seconds to read); tokenizers trained once per process.
    corpus = load_bundled_corpus("dev" if spec["quick"] else "train").head(spec["pairs"])
    key = ("tokenizers", spec["quick"], spec["pairs"])
    if key not in _CACHE:
        _CACHE[key] = train_tokenizers(spec["quick"], corpus.sources, corpus.targets)
    src_tok, tgt_tok = _CACHE[key]
    max_length = 16 if spec["quick"] else 64
    tokens_per_batch = 64 if spec["quick"] else 4096
    dataset, stats = make_dataset(
        corpus.sources,
        corpus.targets,
        src_tok,
        tgt_tok,
        max_length=max_length,
        tokens_per_batch=tokens_per_batch,
        bucket_boundaries=None if spec["bucketing"] else [max_length],
        shuffle=True,
        seed=0,
        repeat=True,
    )
    preset = "tiny" if spec["quick"] else "small"
    config = TransformerConfig.from_preset(preset, src_vocab_size=src_tok.vocab_size, tgt_vocab_size=tgt_tok.vocab_size, max_length=max_length)
    precision = resolve_precision("auto")
    model = _CACHE.get("e2e_model") if spec["quick"] else None  # --quick: one model (and trace) for both pipelines
    if model is None:
        keras.utils.set_random_seed(0)
        model = build_transformer(config, dtype=precision)
        model.compile(
            optimizer=create_optimizer(config.d_model, 1000),
            loss=MaskedSparseCategoricalCrossentropy(pad_id=PAD_ID, label_smoothing=0.1),
            metrics=[MaskedAccuracy(pad_id=PAD_ID)],
            jit_compile=False,
        )
        _CACHE["e2e_model"] = model
    iterator = iter(dataset)

    def step():
        x, y = next(iterator)
        model.train_on_batch(x, y)
        labels = y.numpy()
        enc = x["encoder_inputs"].numpy()
        return {
            "target_tokens": int((labels != PAD_ID).sum()),
            "positions": int(labels.size),
            "pad_positions": int((labels == PAD_ID).sum() + (enc == PAD_ID).sum()),
            "all_positions": int(labels.size + enc.size),
        }

    for _ in range(spec["warmup"]):
        step()

    # The input pipeline alone (a second iterator over the same dataset): if it delivers far more tokens/s than
    # training consumes, tf.data is not the bottleneck (make_dataset maps in parallel and prefetches).
    pipeline = iter(dataset)
    for _ in range(5):
        next(pipeline)
    n_pipe = 5 if spec["quick"] else 200
    t0, pipe_tokens = time.perf_counter(), 0
    for _ in range(n_pipe):
        pipe_tokens += int(tf.math.count_nonzero(next(pipeline)[1]))
    pipeline_rate = pipe_tokens / (time.perf_counter() - t0)
    del pipeline

    def run():
        totals = {"target_tokens": 0, "positions": 0, "pad_positions": 0, "all_positions": 0}
        t0 = time.perf_counter()
        for _ in range(spec["steps"]):
            for k, v in step().items():
                totals[k] += v
        return {**totals, "seconds": time.perf_counter() - t0, "steps": spec["steps"]}

    return {
        "ready": {
            "stats": stats.to_dict(),
            "pipeline_only_target_tokens_per_s": round(pipeline_rate, 1),
            "config": {
                "preset": preset,
                "precision": precision,
                "tokens_per_batch": tokens_per_batch,
                "max_length": max_length,
                "pairs": len(corpus),
                "tokenizers": "trained here",
                "warmup_steps": spec["warmup"],
                "steps_per_repeat": spec["steps"],
                "parameters": int(model.count_params()),
            },
        },
        "run": run,
    }


UNTRAINED = "untrained tiny model (no --run-dir)"


def untrained_tiny_task(dtype):
    """For --quick without --run-dir: an untrained `tiny` TransformerSeq2SeqLM (seeded, max_length 24) in the dtype
    policy `dtype`, with tokenizers trained on 500 bundled pairs. Its translations are meaningless but
    deterministic, which is all that speed figures and output comparisons need."""
    import keras

    from keras_transformer.config import TransformerConfig
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.model import build_transformer
    from keras_transformer.preprocessor import TransformerSeq2SeqLMPreprocessor
    from keras_transformer.seq_2_seq_lm import TransformerSeq2SeqLM

    train = load_bundled_corpus("train").head(500)
    src, tgt = train_tokenizers(True, train.sources, train.targets)
    config = TransformerConfig.from_preset("tiny", src_vocab_size=src.vocab_size, tgt_vocab_size=tgt.vocab_size, max_length=24)
    keras.utils.set_random_seed(0)
    backbone = build_transformer(config, dtype=dtype)
    preprocessor = TransformerSeq2SeqLMPreprocessor(src, tgt, max_length=config.max_length)
    return TransformerSeq2SeqLM(backbone=backbone, preprocessor=preprocessor, compile=False)


def dir_size_mb(path):
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def exports_worker(spec):
    setup_tf(spec)
    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.evaluation import corpus_scores
    from keras_transformer.export.saved_model import SavedModelTranslator, export_saved_model
    from keras_transformer.export.tflite import TFLiteTranslator, export_tflite
    from keras_transformer.translator import Translator

    quick = spec["quick"]
    note = ""
    keras_size = None
    if spec.get("run_dir"):
        run_dir = Path(spec["run_dir"])
        translator = Translator.load(run_dir)
        origin = str(run_dir)
        model_file = run_dir / "model.keras" if run_dir.is_dir() else run_dir
        keras_size = dir_size_mb(model_file) if model_file.is_file() else None
    else:  # --quick: an untrained tiny model; the speed figures still mean something, the BLEU does not
        translator = Translator(untrained_tiny_task("float32"))
        origin = UNTRAINED
        note = "untrained model: BLEU is meaningless. "
    test = load_bundled_corpus("test")
    n_bleu = spec["bleu_sentences"] or len(test)
    if quick:
        n_bleu = 4
    sources, references = test.sources[:n_bleu], test.targets[:n_bleu]
    n_b1 = 4 if quick else 40
    n_b32 = 8 if quick else 256
    speed_b1 = test.sources[-n_b1:]
    speed_b32 = test.sources[-n_b32:]

    def time_b1(translate_one):
        for s in speed_b1:  # warm-up: every padded shape compiled once
            translate_one(s)
        t0 = time.perf_counter()
        for s in speed_b1:
            translate_one(s)
        return round(1000 * (time.perf_counter() - t0) / len(speed_b1), 2)

    def time_b32(translate_many):
        translate_many(speed_b32[:32])
        translate_many(speed_b32)  # every padded shape compiled once
        t0 = time.perf_counter()
        translate_many(speed_b32)
        return round(len(speed_b32) / (time.perf_counter() - t0), 1)

    def keras_row(keras_translator, size_mb):
        return {
            "size_mb": size_mb,
            "ms_per_sentence_batch1": time_b1(lambda s: keras_translator.translate([s], batch_size=1)),
            "sentences_per_s_batch32": time_b32(lambda t: keras_translator.translate(t, batch_size=32)),
            "bleu": corpus_scores(keras_translator.translate(sources, batch_size=64), references)["bleu"],
        }

    results = {}
    # The Translator's default decodes with float32 weights on CPU, whatever the training precision; the exporters
    # compute in float32 too. The second row decodes in the model's own (training) precision.
    results["Keras, Translator default (float32 weights on CPU), XLA loop"] = keras_row(translator, keras_size)
    if translator.task is not None:  # a TransformerSeq2SeqLM brings its tokenizers
        own_precision = Translator(translator.task, decode_precision="model")
    else:
        own_precision = Translator(
            translator.model, source_tokenizer=translator.source_tokenizer, target_tokenizer=translator.target_tokenizer,
            decode_precision="model",
        )
    results[f"Keras, decode_precision=model ({own_precision.decode_precision}), XLA loop"] = keras_row(own_precision, None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-exports-"))
    t0 = time.time()
    saved = export_saved_model(translator, tmp / "saved", "translator")
    export_seconds = {"saved_model": round(time.time() - t0, 1)}
    sm = SavedModelTranslator.load(saved)
    results["SavedModel (float32, serving_default)"] = {
        "size_mb": dir_size_mb(saved),
        "ms_per_sentence_batch1": time_b1(lambda s: sm.translate([s], batch_size=1)),
        "sentences_per_s_batch32": time_b32(lambda t: sm.translate(t, batch_size=32)),
        "bleu": corpus_scores(sm.translate(sources, batch_size=64), references)["bleu"],
    }
    for quantize in ("none", "float16", "dynamic"):
        t0 = time.time()
        path = export_tflite(translator, tmp / f"tflite-{quantize}" / "model.tflite", quantize=quantize)
        export_seconds[f"tflite_{quantize}"] = round(time.time() - t0, 1)
        runner = TFLiteTranslator.load(path)
        label = {"none": "float32", "float16": "float16", "dynamic": "dynamic-range int8"}[quantize]
        results[f"TFLite {label}"] = {
            "size_mb": dir_size_mb(path),
            "ms_per_sentence_batch1": time_b1(lambda s: runner.translate([s])),
            "sentences_per_s_batch32": None,
            "bleu": corpus_scores(runner.translate(sources), references)["bleu"],
        }
    base = results["TFLite float32"]["bleu"]
    for name in ("TFLite float16", "TFLite dynamic-range int8"):
        results[name]["bleu_delta_vs_float32"] = round(results[name]["bleu"] - base, 2)
    shutil.rmtree(tmp, ignore_errors=True)
    note += f"subset of the first {n_bleu} of {len(test)} test sentences" if n_bleu < len(test) else "full test split"
    return {
        "ready": {
            "exports": {
                "model": origin,
                "bleu_sentences": n_bleu,
                "speed_sentences": {"batch1": n_b1, "batch32": n_b32},
                "export_seconds": export_seconds,
                "results": results,
                "note": note + "; TFLite models take batch 1 only.",
            }
        }
    }


def engines_prepare_worker(spec):
    """What the engine workers load: the run directory (for --quick without --run-dir, an untrained tiny
    mixed_bfloat16 model saved into `out_dir`, so that every engine reads one model from disk the same way) and
    its CTranslate2 exports, one per quantization, written once into `out_dir` (each export first checks that
    float32 CTranslate2 greedy output equals ours on probe sentences)."""
    setup_tf(spec)
    from keras_transformer.translator import Translator

    out_dir = Path(spec["out_dir"])
    if spec.get("run_dir"):
        run_dir = origin = spec["run_dir"]
    else:
        from keras_transformer.run_directory import RunDirectory

        run_dir, origin = out_dir / "run", UNTRAINED
        run_dir.mkdir()
        RunDirectory(run_dir).save_best_model(untrained_tiny_task("mixed_bfloat16"))
    translator = Translator.load(run_dir, decode_precision="float32")
    ready = {
        "run_dir": str(run_dir),
        "model": str(origin),
        "model_precision": translator.model.dtype_policy.name,
        "ct2_exports": {},
        "ct2_sizes_mb": {},
    }
    try:
        import ctranslate2  # noqa: F401 - optional: without it the section has only our rows
    except ImportError as error:
        ready["ct2_missing"] = f"ctranslate2 is not importable ({error}); pip install keras-transformer[ctranslate2]."
        return {"ready": ready}
    from keras_transformer.export.ctranslate2 import export_ctranslate2

    for quantize in spec["quantizations"]:
        path = export_ctranslate2(translator, out_dir / f"ct2-{quantize}", quantize=quantize)
        ready["ct2_exports"][quantize] = str(path)
        ready["ct2_sizes_mb"]["float32" if quantize == "none" else quantize] = dir_size_mb(path / "model.bin")
    return {"ready": ready}


def engine_worker(spec):
    """One engine of the `engines` section: ours (`Translator.load(run_dir, decode_precision=...)`, XLA decode
    loop) or a CTranslate2 export (`CTranslate2Translator`, no TensorFlow in its process). Setup translates every
    workload once (compiling every padded shape of ours) and keeps those outputs for the comparison across engines;
    each repeat then times every workload (decoding x batch) once. Batch 1 is one call per sentence."""
    from keras_transformer.data import load_bundled_corpus

    if spec["engine"] == "ours":
        setup_tf(spec)
        from keras_transformer.translator import Translator

        translator = Translator.load(spec["path"], decode_precision=spec["decode_precision"])
        details = {"decode_precision": translator.decode_precision, "decode_shards": translator.decode_shards}

        def translate(texts, beam_size, batch):
            options = {"decoding": "beam", "beam_size": beam_size} if beam_size > 1 else {"decoding": "greedy"}
            return translator.translate(texts, batch_size=batch, **options)

    else:
        from keras_transformer.export.ctranslate2 import CTranslate2Translator

        translator = CTranslate2Translator.load(spec["path"])
        details = {"inter_threads": translator.inter_threads, "intra_threads": translator.intra_threads,
                   "compute_type": translator.compute_type}

        def translate(texts, beam_size, batch):
            return translator.translate(texts, beam_size=beam_size, batch_size=batch)

    sources = load_bundled_corpus("test").sources

    def decode(workload):
        texts = sources[: workload["sentences"]]
        if workload["batch"] == 1:
            return [translate([text], workload["beam_size"], 1)[0] for text in texts]
        return translate(texts, workload["beam_size"], workload["batch"])

    outputs = {w["key"]: decode(w) for w in spec["workloads"]}

    def run():
        seconds = {}
        for workload in spec["workloads"]:
            t0 = time.perf_counter()
            decode(workload)
            seconds[workload["key"]] = time.perf_counter() - t0
        return seconds

    return {"ready": {**details, "outputs": outputs}, "run": run}


if __name__ == "__main__":
    sys.exit(main())
