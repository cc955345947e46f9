#!/usr/bin/env python
"""Benchmark of keras-transformer against keras-hub, measured in ONE run on the same machine.

    python bench/bench.py [--quick] [--exports] [--out bench/results.json]

The machine is shared (other people's tests run on the same 2 cores), so absolute figures drift from minute to
minute. Every comparison is therefore made inside one run and the timed repeats of the compared configurations are
INTERLEAVED (round robin): each configuration lives in its own worker process (built and warmed up once, which also
gives a clean peak RSS per configuration), and the orchestrator asks the workers in turn for one timed repeat, R
times. Reported figures are medians of those repeats; ratios are taken between medians of the same run.

Sections (all in the JSON written to --out; a markdown table goes to stdout):
1. `machine`: square matmuls through `tf.function`, float32 and bfloat16, GFLOP/s.
2. `training`: target tokens/s (non-pad labels) at the reference config (4+4 layers, d_model 256, 8 heads, dff 1024,
   dropout 0.1, vocabularies 8,000, batch 64, length 48 with random lengths and padding, Adam + warmup schedule +
   masked loss) for keras-hub's TransformerEncoder/Decoder stack (float32, with/without XLA) and for
   keras-transformer (float32 / mixed_bfloat16, with/without XLA), on the same batches; plus peak RSS per config.
3. `decoding`: greedy decoding, ms per token (whole batch advancing one position, 48 positions forced) at batch 1
   and 32: keras-hub's GreedySampler over a cached next() (self- and cross-attention caches, the way keras-hub's
   BART generates), keras-transformer cached and uncached; all XLA-compiled.
4. `end_to_end`: training on the bundled corpus through `make_dataset`, with and without length bucketing:
   real target tokens/s and padding share.
5. `exports` (only with --exports): decode speed, file sizes and test BLEU of Keras / SavedModel / TFLite.

`--quick` shrinks every size so that the whole run takes well under a minute (for tests; the numbers then mean
nothing). `--sections` picks sections (comma separated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keras_transformer.runtime import XLA_FUSION_FLAGS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `train --xla-fusion` (TrainingConfig.xla_fusion, opt-in): a worker environment; compiled again for every batch shape
XLA_FUSION_ENV = {"TF_XLA_FLAGS": XLA_FUSION_FLAGS}
RUN_DIR = Path("/tmp/main/saved_models/ko-en-small")
START_ID, END_ID, PAD_ID = 2, 3, 0

REFERENCE = dict(num_layers=4, d_model=256, num_heads=8, dff=1024, dropout_rate=0.1, vocab=8000, batch=64, length=48)
QUICK = dict(num_layers=1, d_model=32, num_heads=4, dff=64, dropout_rate=0.1, vocab=200, batch=4, length=12)


# ----------------------------------------------------------------------------------------------------------------
# Orchestration (no TensorFlow in this process)
# ----------------------------------------------------------------------------------------------------------------


class Worker:
    """One configuration in its own process: built and warmed up at start, then timed on request."""

    def __init__(self, kind, spec):
        self.kind, self.spec = kind, spec
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        env.update(spec.get("env", {}))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if not spec.get("verbose") else None,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
        self.ready = self._read("READY")

    def _read(self, tag):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"worker {self.kind} {self.spec.get('name')} died:\n{err[-4000:]}")
            if line.startswith(f"@@{tag} "):
                return json.loads(line[len(tag) + 3 :])

    def request(self, command="run"):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read("RESULT" if command == "run" else "FINAL")

    def close(self):
        try:
            final = self.request("quit")
        finally:
            self.proc.wait(timeout=120)
        return final


class InProcessWorker:
    """The same interface, run inside this process (for --quick: no process start-up per configuration)."""

    proc = None

    def __init__(self, kind, spec):
        self.kind, self.spec = kind, spec
        started = time.time()
        state = WORKERS[kind](spec)
        self.ready = state.pop("ready", {})
        self.ready["setup_seconds"] = round(time.time() - started, 1)
        self._run = state.get("run")

    def request(self, command="run"):
        return self._run() if command == "run" else {"peak_rss_mb": peak_rss_mb()}

    def close(self):
        return self.request("quit")


IN_PROCESS = False


def make_worker(kind, spec):
    return InProcessWorker(kind, spec) if IN_PROCESS else Worker(kind, spec)


def run_worker_once(kind, spec):
    """A worker that does all its work at start (READY carries the result)."""
    worker = make_worker(kind, spec)
    final = worker.close()
    return {**worker.ready, **final}


def interleaved(specs, kind, repeats):
    """Starts one worker per spec (one after the other), then asks them in turn for `repeats` timed repeats each.
    Returns {name: {"ready": ..., "repeats": [...], "final": ...}}."""
    workers = []
    try:
        for spec in specs:
            started = time.time()
            workers.append(make_worker(kind, spec))
            print(f"  [{spec['name']}] ready in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        results = {w.spec["name"]: {"ready": w.ready, "repeats": []} for w in workers}
        for r in range(repeats):
            for w in workers:
                results[w.spec["name"]]["repeats"].append(w.request("run"))
            print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
        for w in workers:
            results[w.spec["name"]]["final"] = w.close()
        return results
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()


def median(values):
    return float(statistics.median(values)) if values else float("nan")


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# Sections (orchestrator side)
# ----------------------------------------------------------------------------------------------------------------


def section_machine(args):
    sizes = [64, 128] if args.quick else [1024, 2048]
    result = run_worker_once("machine", {"name": "machine", "sizes": sizes, "repeats": 3 if args.quick else 5})
    return {"matmul": result["matmul"], "cpu": result["cpu"]}


def training_specs(args, model, variants=None):
    steps = 1 if args.quick else args.train_steps
    base = dict(model=model, steps=steps, warmup=1 if args.quick else 3, seed=0, threads=args.threads)
    variants = variants or [
        ("keras-hub float32", dict(impl="hub", precision="float32", jit=False)),
        ("keras-hub float32 XLA", dict(impl="hub", precision="float32", jit=True)),
        ("ours float32", dict(impl="ours", precision="float32", jit=False)),
        ("ours mixed_bfloat16", dict(impl="ours", precision="mixed_bfloat16", jit=False)),
        ("ours mixed_bfloat16 + XLA fusion", dict(impl="ours", precision="mixed_bfloat16", jit=False, env=XLA_FUSION_ENV)),
        ("ours mixed_bfloat16 XLA", dict(impl="ours", precision="mixed_bfloat16", jit=True)),
    ]
    if args.quick:  # the two that matter, without XLA compiles, to stay fast
        variants = [v for v in variants if v[0] in ("keras-hub float32", "ours mixed_bfloat16")]
    return [{**base, **v, "name": name} for name, v in variants]


def summarize_training(raw, baseline="keras-hub float32"):
    rows = {}
    for name, r in raw.items():
        rates = [x["target_tokens"] / x["seconds"] for x in r["repeats"]]
        positions = [x["positions"] / x["seconds"] for x in r["repeats"]]
        rows[name] = {
            "target_tokens_per_s": round(median(rates), 1),
            "target_tokens_per_s_repeats": [round(x, 1) for x in rates],
            "padded_positions_per_s": round(median(positions), 1),
            "step_ms": round(1000 * median([x["seconds"] / x["steps"] for x in r["repeats"]]), 1),
            "peak_rss_mb": r["final"]["peak_rss_mb"],
            "parameters": r["ready"]["parameters"],
            "setup_seconds": r["ready"]["setup_seconds"],
            "real_target_share": r["ready"]["real_target_share"],
            "final_loss": r["repeats"][-1]["loss"],
        }
    hub = [v["target_tokens_per_s"] for k, v in rows.items() if k.startswith("keras-hub")]
    best_hub = max(hub) if hub else None
    for name, row in rows.items():
        if baseline in rows:
            row["ratio_vs_keras_hub_float32"] = round(row["target_tokens_per_s"] / rows[baseline]["target_tokens_per_s"], 2)
        if best_hub:
            row["ratio_vs_best_keras_hub"] = round(row["target_tokens_per_s"] / best_hub, 2)
    return rows


def section_training(args):
    model = QUICK if args.quick else REFERENCE
    repeats = 1 if args.quick else args.repeats
    specs = training_specs(args, model)
    raw = interleaved(specs, "train", repeats)
    result = {
        "config": {**model, "steps_per_repeat": specs[0]["steps"], "repeats": repeats, "min_length": max(2, model["length"] // 6)},
        "results": summarize_training(raw),
    }
    return result


def section_decoding(args):
    model = QUICK if args.quick else REFERENCE
    spec = dict(
        name="decoding",
        model=model,
        steps=4 if args.quick else 48,
        batches=[1, 2] if args.quick else [1, 32],
        repeats=1 if args.quick else args.repeats,
        threads=args.threads,
        uncached=not args.quick,
        bf16=not args.quick,
    )
    result = run_worker_once("decode", spec)
    return result["decoding"]


def section_end_to_end(args):
    common = dict(
        quick=args.quick,
        steps=1 if args.quick else 20,
        warmup=1 if args.quick else 30,
        pairs=400 if args.quick else args.e2e_pairs,
        threads=args.threads,
    )
    specs = [
        {**common, "name": "bucketing (default boundaries)", "bucketing": True},
        {**common, "name": "no bucketing (everything padded to max_length)", "bucketing": False},
        {**common, "name": "bucketing + XLA fusion", "bucketing": True, "env": XLA_FUSION_ENV},
    ]
    raw = interleaved(specs, "e2e", 1 if args.quick else args.repeats)
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


def section_exports(args):
    spec = dict(name="exports", quick=args.quick, bleu_sentences=args.bleu_sentences, threads=args.threads)
    return run_worker_once("exports", spec)["exports"]


SECTIONS = {
    "machine": section_machine,
    "training": section_training,
    "decoding": section_decoding,
    "end_to_end": section_end_to_end,
    "exports": section_exports,
}


def markdown(results):
    out = []
    m = results.get("machine")
    if m:
        out += ["### Machine (square matmul through tf.function)", "", "| n | float32 GFLOP/s | bfloat16 GFLOP/s | bf16/f32 |", "|---|---|---|---|"]
        for n, row in m["matmul"].items():
            out.append(f"| {n} | {row['float32']:.0f} | {row['bfloat16']:.0f} | {row['bfloat16'] / row['float32']:.1f}x |")
        out.append("")
    t = results.get("training")
    if t:
        out += [
            "### Training, reference config (target tokens/s, median of repeats)",
            "",
            "| configuration | target tok/s | step ms | vs keras-hub f32 | vs best keras-hub | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in t["results"].items():
            out.append(
                f"| {name} | {row['target_tokens_per_s']:,.0f} | {row['step_ms']:.0f} | "
                f"{row.get('ratio_vs_keras_hub_float32', float('nan')):.2f}x | {row.get('ratio_vs_best_keras_hub', float('nan')):.2f}x | "
                f"{row['peak_rss_mb']:,.0f} |"
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
            "### Exports",
            "",
            "| artefact | size MB | ms/sentence, batch 1 | sentences/s, batch 32 | test BLEU |",
            "|---|---|---|---|---|",
        ]
        for name, row in x["results"].items():
            b32 = row.get("sentences_per_s_batch32")
            bleu = row.get("bleu")
            size = "-" if row["size_mb"] != row["size_mb"] else f"{row['size_mb']:.1f}"  # nan: not a file
            out.append(
                f"| {name} | {size} | {row['ms_per_sentence_batch1']:.1f} | "
                f"{'-' if b32 is None else f'{b32:.1f}'} | {'-' if bleu is None else f'{bleu:.2f}'} |"
            )
        out.append(f"\nBLEU on {x['bleu_sentences']} test sentences; {x.get('note', '')}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests (numbers mean nothing)")
    parser.add_argument("--exports", action="store_true", help="also run the export section (minutes)")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--sections", default=None, help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration (interleaved)")
    parser.add_argument("--train-steps", type=int, default=4, help="training steps per timed repeat")
    parser.add_argument("--e2e-pairs", type=int, default=60000, help="training pairs tokenized for the end-to-end section")
    parser.add_argument("--bleu-sentences", type=int, default=500, help="test sentences for the export BLEU (0 = all 2,000)")
    parser.add_argument("--threads", default=None, help="intra,inter op threads for every worker (default: TF's)")
    parser.add_argument(
        "--in-process", choices=("auto", "yes", "no"), default="auto",
        help="run the configurations inside this process (auto: only with --quick; no clean per-config RSS then)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, json.loads(args.spec))

    global IN_PROCESS
    IN_PROCESS = args.in_process == "yes" or (args.in_process == "auto" and args.quick)
    if IN_PROCESS:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    names = args.sections.split(",") if args.sections else [s for s in SECTIONS if s != "exports" or args.exports]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    results = {
        "meta": {
            "quick": args.quick,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_start": loadavg(),
            "threads": args.threads,
            "in_process": IN_PROCESS,
        }
    }
    for name in names:
        started = time.time()
        print(f"== {name}", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](args)
        results[name]["section_seconds"] = round(time.time() - started, 1)
        results[name]["loadavg_after"] = loadavg()
    results["meta"]["loadavg_end"] = loadavg()
    results["meta"]["versions"] = run_worker_once("versions", {"name": "versions"})["versions"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Workers (TensorFlow lives here)
# ----------------------------------------------------------------------------------------------------------------


def emit(tag, payload):
    sys.stdout.write(f"@@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def peak_rss_mb():
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def setup_tf(spec):
    import tensorflow as tf

    threads = spec.get("threads")
    if threads:
        intra, inter = (int(x) for x in str(threads).split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    for patch in spec.get("patches", []):  # A/B of performance levers: see bench/levers.py
        sys.path.insert(0, str(HERE))
        import levers

        getattr(levers, patch)()
    return tf


def worker_main(kind, spec):
    import warnings

    warnings.filterwarnings("ignore")
    started = time.time()
    handler = WORKERS[kind]
    state = handler(spec)
    ready = state.pop("ready", {})
    ready["setup_seconds"] = round(time.time() - started, 1)
    emit("READY", ready)
    run = state.get("run")
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            emit("RESULT", run())
        elif command == "quit":
            emit("FINAL", {"peak_rss_mb": peak_rss_mb()})
            return 0
    return 0


def worker_versions(spec):
    import keras
    import keras_hub
    import tensorflow as tf

    import keras_transformer.losses as losses
    from keras_transformer.layers.multi_head_attention import MultiHeadAttention

    from keras_transformer.layers.token_embedding import TokenEmbedding

    levers = hasattr(losses, "smoothed_cross_entropy") and hasattr(MultiHeadAttention, "_attend")
    levers = levers and not TokenEmbedding(2, 2).autocast
    return {
        "ready": {
            "versions": {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "keras_hub": keras_hub.__version__,
                "library_levers_in_tree": levers,  # the library's kept levers are in this tree (levers.require_levers)
            }
        }
    }


def worker_machine(spec):
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
    cpu = {"cpus": os.cpu_count()}
    try:
        flags = Path("/proc/cpuinfo").read_text()
        cpu.update(amx_bf16="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags)
    except OSError:
        pass
    return {"ready": {"matmul": table, "cpu": cpu}}


# --- models ------------------------------------------------------------------------------------------------------


def random_batches(count, batch, length, vocab, seed, min_length=None):
    """Random ids with random lengths and padding: encoder ids (END last), decoder inputs (START + target) and labels
    (target + END). Lengths are uniform in [min_length, length] on each side independently."""
    import numpy as np

    rng = np.random.default_rng(seed)
    min_length = min_length or max(2, length // 6)
    batches = []
    positions = np.arange(length)[None, :]
    for _ in range(count):
        src_len = rng.integers(min_length, length + 1, size=(batch, 1))
        tgt_len = rng.integers(min_length, length + 1, size=(batch, 1))
        enc = rng.integers(4, vocab, size=(batch, length)).astype("int32")
        enc = np.where(positions == src_len - 1, END_ID, enc)
        enc = np.where(positions < src_len, enc, PAD_ID).astype("int32")
        target = rng.integers(4, vocab, size=(batch, length)).astype("int32")  # t1 .. t(n-1), then END at n-1
        labels = np.where(positions == tgt_len - 1, END_ID, target)
        labels = np.where(positions < tgt_len, labels, PAD_ID).astype("int32")
        dec = np.concatenate([np.full((batch, 1), START_ID, "int32"), labels[:, :-1]], axis=1)
        dec = np.where(positions < tgt_len, dec, PAD_ID).astype("int32")
        dec = np.where(dec == END_ID, PAD_ID, dec).astype("int32")  # END only ever appears in labels
        batches.append(({"encoder_inputs": enc, "decoder_inputs": dec}, labels))
    return batches


def our_config(model, max_length=64):
    from keras_transformer.config import TransformerConfig

    return TransformerConfig(
        num_layers=model["num_layers"],
        d_model=model["d_model"],
        num_heads=model["num_heads"],
        dff=model["dff"],
        dropout_rate=model["dropout_rate"],
        src_vocab_size=model["vocab"],
        tgt_vocab_size=model["vocab"],
        max_length=max_length,
    )


class HubSeq2Seq:
    """keras-hub's encoder-decoder as the keras-io NMT example builds it (TokenAndPositionEmbedding +
    TransformerEncoder x N + TransformerDecoder x N + Dense), with mask_zero=True so padding is masked, and the
    per-layer dropout of the reference config. `generate` decodes greedily with keras-hub's GreedySampler over a
    cached next(), the way keras-hub's BART does (self-attention cache + cross-attention cache filled once)."""

    def __init__(self, model, max_length=64):
        import keras
        import keras_hub

        self.c = model
        V, d, h, f, p = model["vocab"], model["d_model"], model["num_heads"], model["dff"], model["dropout_rate"]
        self.enc_emb = keras_hub.layers.TokenAndPositionEmbedding(V, max_length, d, mask_zero=True, name="enc_emb")
        self.dec_emb = keras_hub.layers.TokenAndPositionEmbedding(V, max_length, d, mask_zero=True, name="dec_emb")
        self.encoders = [keras_hub.layers.TransformerEncoder(f, h, dropout=p, name=f"enc{i}") for i in range(model["num_layers"])]
        self.decoders = [keras_hub.layers.TransformerDecoder(f, h, dropout=p, name=f"dec{i}") for i in range(model["num_layers"])]
        self.head = keras.layers.Dense(V, name="logits")
        enc_in = keras.Input((None,), dtype="int32", name="encoder_inputs")
        dec_in = keras.Input((None,), dtype="int32", name="decoder_inputs")
        x = self.enc_emb(enc_in)
        for layer in self.encoders:
            x = layer(x)
        y = self.dec_emb(dec_in)
        for layer in self.decoders:
            y = layer(y, x)
        self.model = keras.Model({"encoder_inputs": enc_in, "decoder_inputs": dec_in}, self.head(y))

    def generate(self, encoder_ids, steps):
        import keras_hub
        from keras import ops

        c = self.c
        batch, src_len = ops.shape(encoder_ids)[0], ops.shape(encoder_ids)[1]
        enc_mask = ops.not_equal(encoder_ids, PAD_ID)
        x = self.enc_emb(encoder_ids)
        for layer in self.encoders:
            x = layer(x, padding_mask=enc_mask)
        heads, depth, n = c["num_heads"], c["d_model"] // c["num_heads"], c["num_layers"]
        prompt = ops.concatenate([ops.full((batch, 1), START_ID, "int32"), ops.zeros((batch, steps), "int32")], axis=1)
        self_cache = ops.zeros((batch, n, 2, steps + 1, heads, depth), x.dtype)
        cross_cache = ops.zeros((batch, n, 2, src_len, heads, depth), x.dtype)

        def call_decoder(tokens, self_cache, index, cross_cache, cross_index):
            y = self.dec_emb(tokens, start_index=index)
            selfs, crosses = [], []
            for i, layer in enumerate(self.decoders):
                y, s, cr = layer(
                    decoder_sequence=y,
                    encoder_sequence=x,
                    encoder_padding_mask=enc_mask,
                    self_attention_cache=self_cache[:, i, ...],
                    self_attention_cache_update_index=index,
                    cross_attention_cache=cross_cache[:, i, ...],
                    cross_attention_cache_update_index=cross_index,
                )
                selfs.append(s)
                crosses.append(cr)
            cross = ops.stack(crosses, axis=1) if cross_index is not None else cross_cache
            return self.head(y), ops.stack(selfs, axis=1), cross

        # Prefill with START: fills self-attention position 0 and the whole cross-attention cache.
        _, self_cache, cross_cache = call_decoder(prompt[:, :1], self_cache, 0, cross_cache, 0)

        def next(prompt, cache, index):
            self_cache, cross_cache = cache
            token = ops.slice(prompt, [0, index - 1], [batch, 1])
            logits, self_cache, _ = call_decoder(token, self_cache, index - 1, cross_cache, None)
            return logits[:, 0, :], None, (self_cache, cross_cache)

        sampler = keras_hub.samplers.GreedySampler()
        return sampler(next, prompt, cache=(self_cache, cross_cache), index=1, stop_token_ids=None)[:, 1:]


def build_training_model(spec):
    import keras

    from keras_transformer.optimizers import create_optimizer

    model_cfg = spec["model"]
    keras.utils.set_random_seed(spec.get("seed", 0))
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(spec["precision"])
    try:
        optimizer = create_optimizer(model_cfg["d_model"], warmup_steps=4000)
        if spec["impl"] == "hub":
            model = HubSeq2Seq(model_cfg).model
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if spec.get("metrics", True) else [],
                jit_compile=spec["jit"],
            )
        else:
            from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
            from keras_transformer.metrics import MaskedAccuracy
            from keras_transformer.model import build_transformer

            model = build_transformer(our_config(model_cfg))
            model.compile(
                optimizer=optimizer,
                loss=MaskedSparseCategoricalCrossentropy(pad_id=PAD_ID, label_smoothing=0.1),
                metrics=[MaskedAccuracy(pad_id=PAD_ID)] if spec.get("metrics", True) else [],
                jit_compile=spec["jit"],
            )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return model


def worker_train(spec):
    tf = setup_tf(spec)
    import numpy as np

    m = spec["model"]
    model = build_training_model(spec)
    batches = random_batches(4, m["batch"], m["length"], m["vocab"], seed=spec.get("seed", 0))
    tensors = [({k: tf.constant(v) for k, v in x.items()}, tf.constant(y)) for x, y in batches]
    tokens = [int((y != PAD_ID).sum()) for _, y in batches]
    counter = {"i": 0}

    def step():
        i = counter["i"] % len(tensors)
        counter["i"] += 1
        logs = model.train_on_batch(*tensors[i], return_dict=True)
        return tokens[i], logs

    for _ in range(2 + spec["warmup"]):  # trace/compile + warm-up
        step()

    def run():
        total, t0 = 0, time.perf_counter()
        for _ in range(spec["steps"]):
            n, logs = step()
            total += n
        seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "steps": spec["steps"],
            "target_tokens": total,
            "positions": spec["steps"] * m["batch"] * m["length"],
            "loss": float(logs["loss"]),
        }

    real_share = float(np.mean([t / (m["batch"] * m["length"]) for t in tokens]))
    return {"ready": {"parameters": int(model.count_params()), "real_target_share": round(real_share, 3)}, "run": run}


def worker_decode(spec):
    tf = setup_tf(spec)
    import keras
    import numpy as np

    from keras_transformer.model import build_transformer
    from keras_transformer.translator import Translator

    m, steps = spec["model"], spec["steps"]
    keras.utils.set_random_seed(0)
    max_length = max(64, steps + 1)
    config = our_config(m, max_length=max_length)
    ours = build_transformer(config)
    # Random weights: make END (id 3) never win, so that every position is decoded (no early stop); the compute is
    # unchanged (one bias value).
    projection = ours.get_layer("output_projection")
    bias = projection.bias.numpy()
    bias[END_ID] = -1e4
    projection.bias.assign(bias)
    translator = Translator(ours, config, None, None, max_output_length=steps)  # decode_shards="auto"
    one_loop = Translator(ours, config, None, None, max_output_length=steps, decode_shards=1)
    one_loop_name = "ours greedy, cached, XLA, one loop (decode_shards=1)"
    bf16_translator = None
    if spec.get("bf16", True):  # what Translator.load gives for a model trained under mixed_bfloat16
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        try:
            ours_bf16 = build_transformer(config)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        ours_bf16.set_weights(ours.get_weights())
        bf16_translator = Translator(ours_bf16, config, None, None, max_output_length=steps)
    hub = HubSeq2Seq(m, max_length=max_length)
    hub_generate = tf.function(lambda ids: hub.generate(ids, steps), input_signature=[tf.TensorSpec([None, None], tf.int32)], jit_compile=True)

    sources = random_batches(1, max(spec["batches"]), m["length"], m["vocab"], seed=1)[0][0]["encoder_inputs"]
    candidates = {
        "keras-hub GreedySampler, cached (self + cross), XLA": lambda ids: hub_generate(tf.constant(ids)).numpy(),
        "ours greedy, cached, XLA": lambda ids: translator.translate_ids(ids, "greedy", use_cache=True)[0],
    }
    if translator.decode_shards > 1:  # the same loop, one batch at a time (what batch 1 always gets)
        candidates[one_loop_name] = lambda ids: one_loop.translate_ids(ids, "greedy")[0]
    if bf16_translator is not None:
        candidates["ours greedy, cached, XLA, mixed_bfloat16 model"] = lambda ids: bf16_translator.translate_ids(ids, "greedy")[0]
    if spec.get("uncached", True):
        candidates["ours greedy, uncached, XLA"] = lambda ids: translator.translate_ids(ids, "greedy", use_cache=False)[0]
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
    hub_name, cached, uncached = list(candidates)[0], "ours greedy, cached, XLA", "ours greedy, uncached, XLA"
    ratios = {
        "ours cached vs keras-hub (speedup)": {
            str(b): round(results[hub_name][str(b)]["ms_per_token"] / results[cached][str(b)]["ms_per_token"], 2) for b in inputs
        }
    }
    if one_loop_name in results:
        ratios["ours cached, decode_shards auto vs 1 (speedup)"] = {
            str(b): round(results[one_loop_name][str(b)]["ms_per_token"] / results[cached][str(b)]["ms_per_token"], 2) for b in inputs
        }
    if uncached in results:
        ratios["ours cached vs ours uncached (speedup)"] = {
            str(b): round(results[uncached][str(b)]["ms_per_token"] / results[cached][str(b)]["ms_per_token"], 2) for b in inputs
        }
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


def load_tokenizers(quick, pairs_for_training):
    """The run directory's tokenizers if present, else small ones trained on the bundled corpus."""
    from keras_transformer.data.tokenizer import SubwordTokenizer

    if RUN_DIR.exists() and (RUN_DIR / "source.model").exists() and not quick:
        return SubwordTokenizer.load(RUN_DIR / "source.model"), SubwordTokenizer.load(RUN_DIR / "target.model"), str(RUN_DIR)
    src, tgt = pairs_for_training
    size = 1500 if quick else 8000
    options = dict(hard_vocab_limit=False) if quick else {}
    return (
        SubwordTokenizer.train(src, vocab_size=size, **options),
        SubwordTokenizer.train(tgt, vocab_size=size, **options),
        "trained here",
    )


def worker_e2e(spec):
    tf = setup_tf(spec)
    import keras
    import numpy as np

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
        _CACHE[key] = load_tokenizers(spec["quick"], (corpus.sources, corpus.targets))
    src_tok, tgt_tok, origin = _CACHE[key]
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
        keras.mixed_precision.set_dtype_policy(precision)
        model = build_transformer(config)
        model.compile(
            optimizer=create_optimizer(config.d_model, 1000),
            loss=MaskedSparseCategoricalCrossentropy(pad_id=PAD_ID, label_smoothing=0.1),
            metrics=[MaskedAccuracy(pad_id=PAD_ID)],
            jit_compile=False,
        )
        keras.mixed_precision.set_dtype_policy("float32")
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
    # training consumes, tf.data is not the bottleneck (make_dataset already maps in parallel and prefetches).
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
                "tokenizers": origin,
                "warmup_steps": spec["warmup"],
                "steps_per_repeat": spec["steps"],
                "parameters": int(model.count_params()),
            },
        },
        "run": run,
    }


def dir_size_mb(path):
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def worker_exports(spec):
    tf = setup_tf(spec)
    import keras
    import numpy as np

    from keras_transformer.data import load_bundled_corpus
    from keras_transformer.evaluation import corpus_scores
    from keras_transformer.export.saved_model import SavedModelTranslator, export_saved_model
    from keras_transformer.export.tflite import TFLiteTranslator, export_tflite
    from keras_transformer.translator import Translator

    quick = spec["quick"]
    note = ""
    if RUN_DIR.exists() and (RUN_DIR / "model.keras").exists() and not quick:
        translator = Translator.load(RUN_DIR)
        origin = str(RUN_DIR)
    else:  # an untrained tiny model: the speed figures still mean something, the BLEU does not
        from keras_transformer.config import TransformerConfig
        from keras_transformer.model import build_transformer

        train = load_bundled_corpus("train").head(500)
        src, tgt, _ = load_tokenizers(True, (train.sources, train.targets))
        config = TransformerConfig.from_preset("tiny", src_vocab_size=src.vocab_size, tgt_vocab_size=tgt.vocab_size, max_length=24)
        keras.utils.set_random_seed(0)
        translator = Translator(build_transformer(config), config, src, tgt)
        origin = "untrained tiny model (no run directory)"
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

    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-exports-"))
    keras_size = dir_size_mb(RUN_DIR / "model.keras") if origin == str(RUN_DIR) else None
    keras_row = {
        "size_mb": keras_size if keras_size is not None else float("nan"),
        "ms_per_sentence_batch1": time_b1(lambda s: translator.translate([s], batch_size=1)),
        "sentences_per_s_batch32": time_b32(lambda t: translator.translate(t, batch_size=32)),
        "bleu": corpus_scores(translator.translate(sources, batch_size=64), references)["bleu"],
    }
    results["Keras (model.keras as loaded, training precision, XLA loop)"] = keras_row
    # The exporters compute in float32 whatever the training precision; so does this float32 copy of the model, which
    # is also what the float32 TFLite model is checked against (export_tflite compares it with Keras greedy output).
    from keras_transformer.export.common import float32_model

    translator = Translator(
        float32_model(translator.model, translator.config), translator.config, translator.source_tokenizer,
        translator.target_tokenizer,
    )
    results["Keras (float32 copy of the model, XLA loop)"] = {
        "size_mb": float("nan"),
        "ms_per_sentence_batch1": time_b1(lambda s: translator.translate([s], batch_size=1)),
        "sentences_per_s_batch32": time_b32(lambda t: translator.translate(t, batch_size=32)),
        "bleu": corpus_scores(translator.translate(sources, batch_size=64), references)["bleu"],
    }
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
    import shutil

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


WORKERS = {
    "versions": worker_versions,
    "machine": worker_machine,
    "train": worker_train,
    "decode": worker_decode,
    "e2e": worker_e2e,
    "exports": worker_exports,
}


if __name__ == "__main__":
    sys.exit(main())
