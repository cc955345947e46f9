"""Where the time of the decode loop goes: XLA's own per-op profile of the Translator's compiled loop.

    python bench/profile_decode.py --run-dir saved_models/ko-en-small [--decoding greedy|beam] [--batch 32]
        [--sentences 256] [--decode-shards 1] [--top 25]

Decodes the first `--sentences` sentences of the bundled test split in batches of `--batch` (sorted by length, as
`Translator.translate` does), once to compile every shape, then once under `tf.profiler` with
`--xla_cpu_enable_xprof_traceme=true`, so that XLA reports each op of the compiled program (thunk) by its HLO name.
Prints sentences/s, the op time by kind (matmuls, the fusions XLA made, gathers and scatters) as a share of the
profiled op time, and the `--top` single ops. Use `--decode-shards 1` (default) to see one loop's ops without the
second loop's ops interleaved; op times of two loops side by side overlap.

What it showed for the main-job model (3+3 layers, d_model 256, vocabulary 8,000; AMD EPYC 2-core host with
AVX512-BF16, 2026-12-04; greedy, 16 sentences per loop, float32): matmuls 85% of the op time, 39 per step (the
output projection alone 17%, the feed-forward 20%); the attention's products with one query 11%; every element-wise
fusion together under 15%. The dense layers' matmuls ran at 50-95 GFLOP/s, about one core's float32 rate: the same
matmuls alone in an XLA loop on one thread ran at 75-100 GFLOP/s for 4 to 64 rows (2026-12-06), so a float32 step
gets faster only by computing fewer rows. A step costs the
same whether its rows are still translating or only padding, and a batch that runs until its longest output ends spends most of its row-steps on
finished rows (44% of them were live at batch 32): the loop now drops finished sources (`decode_loop`'s
`halvings`, 1.34x greedy and 1.5x beam 4 at batch 32, same tokens).

Tried on that profile, not kept (interleaved A/B in one process, same tokens; the code is not kept):
- fused Q/K/V projection of the decoder's self-attention (one matmul with the three kernels side by side): 0.96x;
  the fused matmul took as long as the three (0.12 vs 3 x 0.045 ms), the step is not bound by the number of ops.
- the attention of the one query as multiply + reduce instead of a batched matmul: 0.86x, and 0.80x with both.
- XLA CPU flags: YNNPACK dots off (`--xla_cpu_experimental_ynn_fusion_type=`), YNNPACK or XNNPACK fusion of
  dots, element-wise ops and reductions: within the noise (0.95-1.10x, separate processes).
- one intra-op thread per loop with two loops side by side (TensorFlow's intra_op_parallelism_threads=1), as
  CTranslate2 runs: no change.
- whole batches of 32 side by side, one loop each, instead of each batch split into two loops: 1.02x greedy,
  1.10x beam 4, before the loop dropped finished sources.
- bfloat16 weights: XLA's bfloat16 matmuls of the step's shapes ran at 0.6-1.0x its float32 ones (its CPU dots do
  not use the bfloat16 units). Its int8 x int8 -> int32 matmuls ran at 1.15-1.7x, and that one was kept: Keras' int8
  dense layers (`Translator(decode_precision="int8")`) decode greedy batches of 32 1.51x faster than float32, beam 4
  1.30x, with the per-row quantization of the activations included (2026-12-06 22:06, same host, bench/engines.json).
- weights as compile-time constants of the XLA program instead of variables: 1.06x on a chain of the step's dense
  matmuls (microbenchmark, host busy with training); TensorFlow's oneDNN matmuls without XLA: 1.14x in float32
  and 1.68x in bfloat16 on that chain, which would lose XLA's fusion of everything else and, in bfloat16, the
  float32 tokens.
- key/value buffers grown in blocks for greedy too (`cache_block` 16 or 32, as beam search does), so that early
  steps attend over fewer positions: no gain (0.9-1.0x), and the first pass over 500 sentences took 68 s instead of
  22 s with 16-step blocks (more loops to compile).

Kept (2026-12-06, interleaved, same tokens): greedy halving four times instead of twice (1.10x), `translate` handing
the next two batches to the decoding threads before reading a result (1.05x greedy), and whole greedy batches of 32
side by side on the two threads instead of each batch in two loops of 16 (1.10x). Beam search's per-beam top-k
(XLA's TopK custom call, 7% of a beam-4 loop's op time) now reads the vocabulary in blocks of 32 (`top_k_in_blocks`:
a max over every entry, then top_k over the block maxima and over the 4 best blocks): 2.1-2.9x faster as an op,
1.02x for beam 4 at batch 32 (median of 9). What beam search spends besides matmuls (64%): the cache reorder
(gathers, 12%), which moves every key/value buffer each step and is bound by memory bandwidth.

After the halvings, greedy batch 32 in two loops: matmuls 86% of the op time, the encoder's about 18% of it (it
runs once per batch over the padded sources, in larger matmuls at about 180 GFLOP/s), the output projection 15%.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import tempfile
import time
from pathlib import Path

# Program-level events that contain the ops (not ops themselves).
WRAPPERS = ("ThunkExecutor::Execute", "CpuExecutable::ExecuteAsyncOnStream", "BlockUntilReady", "SlinkyThreadPool::Await", "KernelAndDeviceFunc::Run")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a trained model (run directory of keras-transformer train)")
    parser.add_argument("--decoding", default="greedy", choices=("greedy", "beam"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--decode-shards", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from keras_transformer.data.corpus import load_bundled_corpus
    from keras_transformer.translator import Translator, pad_batch

    translator = Translator.load(args.run_dir, decode_shards=args.decode_shards)
    texts = load_bundled_corpus("test").sources[: args.sentences]
    options = {"beam_size": 4} if args.decoding == "beam" else {}
    encoded = translator.encode_sources(texts)
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    batches = [
        pad_batch([encoded[i] for i in order[start : start + args.batch]], max_length=translator.config.max_length)
        for start in range(0, len(order), args.batch)
    ]

    def decode_all():
        start = time.perf_counter()
        for batch in batches:
            translator.translate_ids(batch, args.decoding, **options)
        return time.perf_counter() - start

    decode_all()  # compiles every shape
    unprofiled = decode_all()
    logdir = tempfile.mkdtemp(prefix="profile-decode-")
    tf.profiler.experimental.start(logdir)
    profiled = decode_all()
    tf.profiler.experimental.stop()

    by_op, calls = collections.Counter(), collections.Counter()
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            names = {key: meta.name for key, meta in plane.event_metadata.items()}
            for line in plane.lines:
                if line.name == "python":  # Python and TF runtime events; the ops run on XLA's threads
                    continue
                for event in line.events:
                    name = names.get(event.metadata_id, "?")
                    if name.startswith(WRAPPERS) or name.startswith("end: "):
                        continue
                    by_op[name] += event.duration_ps / 1e6  # microseconds
                    calls[name] += 1
    total = sum(by_op.values()) or 1.0
    kinds, kind_calls = collections.Counter(), collections.Counter()
    for name, us in by_op.items():
        kind = "matmul" if re.match(r"(MatMul|BatchMatMul|dot|einsum)", name, re.I) else re.sub(r"[.\d]+$", "", name)
        kinds[kind] += us
        kind_calls[kind] += calls[name]
    print(f"{args.decoding}, batch {args.batch}, {len(texts)} sentences, decode_shards={args.decode_shards}: "
          f"{len(texts) / unprofiled:.1f} sentences/s ({len(texts) / profiled:.1f} while profiled); "
          f"op time {total / 1e3:.0f} ms")
    print("| kind | ms | share | calls |\n|---|---|---|---|")
    for kind, us in kinds.most_common(args.top):
        print(f"| {kind} | {us / 1e3:.1f} | {us / total:.1%} | {kind_calls[kind]} |")
    print(f"\n| op | ms | share | calls |\n|---|---|---|---|")
    for name, us in by_op.most_common(args.top):
        print(f"| {name} | {us / 1e3:.1f} | {us / total:.1%} | {calls[name]} |")


if __name__ == "__main__":
    main()
