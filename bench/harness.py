"""What the benchmark scripts share: worker processes, interleaved repeats, medians, the machine's description, the
model sizes, random batches and the training workload (keras-transformer and keras-hub).

A worker is one configuration in its own process: it is built and warmed up once (which also gives a clean peak RSS
for that configuration), then the orchestrator asks it for one timed repeat at a time. `interleaved` asks the
workers of a comparison in turn (round robin), so that a slow minute of the shared machine hits every configuration
alike. A worker is a function `spec -> {"ready": {...}, "run": callable}` defined at the top level of a module in
this folder; its process imports that module by name, so no script imports another script.

    import harness
    raw = harness.interleaved(specs, harness.train_worker, repeats=5)
    rows = harness.summarize_training(raw)

Nothing here imports TensorFlow at module level: the orchestrating process stays light, and TensorFlow starts
inside the workers (`setup_tf`).
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from keras_transformer.runtime import XLA_FUSION_FLAGS, cpu_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The environment of `train --xla-fusion` (TrainingConfig.xla_fusion, opt-in), for a worker: TensorFlow reads it at
# start-up, so it takes a process of its own (in-process workers cannot apply it).
XLA_FUSION_ENV = {"TF_XLA_FLAGS": XLA_FUSION_FLAGS}
START_ID, END_ID, PAD_ID = 2, 3, 0

# Reference config of every comparison, and the tiny sizes of --quick (for tests; their figures mean nothing).
REFERENCE = dict(num_layers=4, d_model=256, num_heads=8, dff=1024, dropout_rate=0.1, vocab=8000, batch=64, length=48)
QUICK = dict(num_layers=1, d_model=32, num_heads=4, dff=64, dropout_rate=0.1, vocab=200, batch=4, length=12)


# ----------------------------------------------------------------------------------------------------------------
# Orchestration (no TensorFlow in this process)
# ----------------------------------------------------------------------------------------------------------------

# The whole program of a worker process: import the worker's module from this folder and serve it on stdin/stdout.
_WORKER_PROGRAM = "import sys; sys.path.insert(0, sys.argv[1]); import harness; sys.exit(harness.serve(*sys.argv[2:]))"


def worker_name(function):
    """`module:function` of a worker function, by the file that defines it (a script run as `__main__` too)."""
    return f"{Path(inspect.getfile(function)).stem}:{function.__name__}"


class Worker:
    """One configuration in its own process: built and warmed up at start, then timed on request."""

    def __init__(self, function, spec):
        self.name, self.spec = worker_name(function), spec
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        env.update(spec.get("env", {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_PROGRAM, str(HERE), self.name, json.dumps(spec)],
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
                raise RuntimeError(f"worker {self.name} {self.spec.get('name')} died:\n{err[-4000:]}")
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
    """The same interface, run inside this process (for --quick: no process start-up per configuration; the spec's
    `env` and `threads` cannot take effect then, and the peak RSS is the whole process's)."""

    proc = None

    def __init__(self, function, spec):
        self.spec = spec
        started = time.time()
        state = function(spec)
        self.ready = state.pop("ready", {})
        self.ready["setup_seconds"] = round(time.time() - started, 1)
        self._run = state.get("run")

    def request(self, command="run"):
        return self._run() if command == "run" else {"peak_rss_mb": peak_rss_mb()}

    def close(self):
        return self.request("quit")


def make_worker(function, spec, in_process=False):
    return InProcessWorker(function, spec) if in_process else Worker(function, spec)


def run_worker_once(function, spec, in_process=False):
    """A worker that does all its work at start (READY carries the result)."""
    worker = make_worker(function, spec, in_process)
    final = worker.close()
    return {**worker.ready, **final}


def interleaved(specs, function, repeats, in_process=False):
    """Starts one worker per spec (one after the other), then asks them in turn for `repeats` timed repeats each.
    Returns {name: {"ready": ..., "repeats": [...], "final": ...}}."""
    workers = []
    try:
        for spec in specs:
            started = time.time()
            workers.append(make_worker(function, spec, in_process))
            print(f"  [{spec['name']}] ready in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        if in_process:
            # Building a model calls keras.utils.set_random_seed, which clears TensorFlow's kernel cache: the
            # workers built before the last one pay for that in their next step, so give every one an untimed step.
            for w in workers:
                w.request("run")
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


def describe_machine():
    """The host a run measured: name, CPU model, core count, and whether the CPU has the bfloat16 matmul
    instructions that make mixed_bfloat16 pay on CPU (AMX-BF16, AVX512-BF16), from /proc/cpuinfo."""
    machine = {"host": platform.node(), "cpu_model": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    cpu = cpu_info()
    if cpu is None:
        return machine
    machine["cpu_model"] = cpu["model_name"] or machine["cpu_model"]
    machine.update(amx_bf16="amx_bf16" in cpu["flags"], avx512_bf16="avx512_bf16" in cpu["flags"])
    return machine


def bf16_instructions(machine):
    """`AMX-BF16`, `AVX512-BF16` or `no bfloat16 instructions`, for a `describe_machine()` dict."""
    found = [name for key, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if machine.get(key)]
    return " + ".join(found) if found else "no bfloat16 instructions"


# ----------------------------------------------------------------------------------------------------------------
# Worker side (TensorFlow lives here)
# ----------------------------------------------------------------------------------------------------------------


def emit(tag, payload):
    sys.stdout.write(f"@@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def peak_rss_mb():
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def setup_tf(spec):
    """Imports TensorFlow with the spec's `threads` ("intra,inter"), before any op runs."""
    import tensorflow as tf

    threads = spec.get("threads")
    if threads:
        intra, inter = (int(x) for x in str(threads).split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    return tf


def serve(name, spec_json):
    """The worker process: builds the worker `module:function` for the spec, says READY, then answers `run` with
    one timed repeat and `quit` with the peak RSS."""
    import importlib
    import warnings

    warnings.filterwarnings("ignore")
    module, function = name.split(":")
    started = time.time()
    state = getattr(importlib.import_module(module), function)(json.loads(spec_json))
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


# ----------------------------------------------------------------------------------------------------------------
# Models and the training workload
# ----------------------------------------------------------------------------------------------------------------


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
    """The `TransformerConfig` of a model spec (REFERENCE, QUICK)."""
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
    cached next(), the way keras-hub's BART does (self-attention cache + cross-attention cache filled once).
    `dtype`: the dtype policy of every layer."""

    def __init__(self, model, max_length=64, dtype="float32"):
        import keras
        import keras_hub

        self.c = model
        V, d, h, f, p = model["vocab"], model["d_model"], model["num_heads"], model["dff"], model["dropout_rate"]
        self.enc_emb = keras_hub.layers.TokenAndPositionEmbedding(V, max_length, d, mask_zero=True, dtype=dtype, name="enc_emb")
        self.dec_emb = keras_hub.layers.TokenAndPositionEmbedding(V, max_length, d, mask_zero=True, dtype=dtype, name="dec_emb")
        self.encoders = [
            keras_hub.layers.TransformerEncoder(f, h, dropout=p, dtype=dtype, name=f"enc{i}") for i in range(model["num_layers"])
        ]
        self.decoders = [
            keras_hub.layers.TransformerDecoder(f, h, dropout=p, dtype=dtype, name=f"dec{i}") for i in range(model["num_layers"])
        ]
        self.head = keras.layers.Dense(V, dtype=dtype, name="logits")
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
    """The compiled training model of a spec: `impl` "ours" (keras-transformer: masked loss with label smoothing
    0.1, masked accuracy) or "hub" (keras-hub: Keras' sparse cross-entropy ignoring pads, accuracy), both with
    Adam and the warmup schedule, in the dtype policy `precision`; `metrics: false` leaves out the accuracy,
    `packing: false` turns off our token packing (keras_transformer/layers/token_packing.py)."""
    import keras

    from keras_transformer.layers import token_packing
    from keras_transformer.optimizers import create_optimizer

    token_packing.set_enabled(spec.get("packing", True))

    model_cfg = spec["model"]
    keras.utils.set_random_seed(spec.get("seed", 0))
    optimizer = create_optimizer(model_cfg["d_model"], warmup_steps=4000)
    with_metrics = spec.get("metrics", True)
    if spec["impl"] == "hub":
        model = HubSeq2Seq(model_cfg, dtype=spec["precision"]).model
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if with_metrics else [],
            jit_compile=spec["jit"],
        )
        return model
    from keras_transformer.losses import MaskedSparseCategoricalCrossentropy
    from keras_transformer.metrics import MaskedAccuracy
    from keras_transformer.model import build_transformer

    model = build_transformer(our_config(model_cfg), dtype=spec["precision"])
    model.compile(
        optimizer=optimizer,
        loss=MaskedSparseCategoricalCrossentropy(pad_id=PAD_ID, label_smoothing=0.1),
        metrics=[MaskedAccuracy(pad_id=PAD_ID)] if with_metrics else [],
        jit_compile=spec["jit"],
    )
    return model


def train_worker(spec):
    """Training steps on 4 fixed random batches of the spec's model (`impl`, `precision`, `jit`, `steps` per repeat,
    `warmup` steps after the trace)."""
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
    source_share = float(np.mean([(x["encoder_inputs"] != PAD_ID).mean() for x, _ in batches]))
    ready = {"parameters": int(model.count_params()), "real_target_share": round(real_share, 3), "real_source_share": round(source_share, 3)}
    return {"ready": ready, "run": run}


def summarize_training(raw, baseline="keras-hub float32"):
    """Rows of `interleaved(..., train_worker, ...)`: medians of the repeats, and ratios against `baseline` and
    against the fastest keras-hub row."""
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
            "real_source_share": r["ready"]["real_source_share"],
            "final_loss": r["repeats"][-1]["loss"],
        }
    hub = [v["target_tokens_per_s"] for k, v in rows.items() if k.startswith("keras-hub")]
    best_hub = max(hub) if hub else None
    for name, row in rows.items():
        if baseline in rows:
            row["ratio_vs_keras_hub_float32" if baseline == "keras-hub float32" else "ratio_vs_baseline"] = round(
                row["target_tokens_per_s"] / rows[baseline]["target_tokens_per_s"], 2
            )
        if best_hub:
            row["ratio_vs_best_keras_hub"] = round(row["target_tokens_per_s"] / best_hub, 2)
    return rows
