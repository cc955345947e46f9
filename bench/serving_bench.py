"""Throughput and latency of `keras-transformer serve` over REST and gRPC, batching on and off.

Not a timed test: run it by hand, on an otherwise idle machine, and paste the table into docs/serving.md.

    python bench/serving_bench.py                      # a tiny untrained export built here (as the tests do)
    python bench/serving_bench.py --model-base-path exports/translator --seconds 5

For each API (REST, gRPC), batching (on: --max-batch-size 32 --batch-timeout-ms 5; off: batches of 1) and
concurrency (1, 8, 32 client threads, one keep-alive connection or gRPC stub each), clients send one-sentence
predict requests for `--seconds` seconds to 127.0.0.1. It prints requests/s, p50 and p99 latency and the
number of errors (which must be 0), as a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CONCURRENCY = (1, 8, 32)
BATCHING = {"on": dict(max_batch_size=32, batch_timeout_ms=5.0), "off": dict(max_batch_size=1, batch_timeout_ms=0.0)}


def build_tiny_export(export_dir):
    """The tiny untrained translator of tests/test_serving.py, exported: (model base path, sentences)."""
    import keras

    from keras_transformer import TransformerConfig
    from keras_transformer.data import SubwordTokenizer, load_bundled_corpus
    from keras_transformer.export import export_saved_model
    from keras_transformer.model import build_transformer
    from keras_transformer.translator import Translator

    keras.utils.set_random_seed(1234)
    dev = load_bundled_corpus("dev")
    head = dev.head(300)
    options = dict(vocab_size=600, byte_fallback=False, character_coverage=1.0, hard_vocab_limit=False)
    source, target = (SubwordTokenizer.train(texts, **options) for texts in (head.sources, head.targets))
    config = TransformerConfig.from_preset("tiny", src_vocab_size=source.vocab_size, tgt_vocab_size=target.vocab_size)
    model = build_transformer(config, dtype="float32")
    translator = Translator(model, source_tokenizer=source, target_tokenizer=target, max_output_length=16)
    version_dir = export_saved_model(translator, export_dir, model_name="translator")
    return version_dir.parent, list(dev.sources[300:400])


def rest_client(server, sentences, stop, latencies, errors):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    i = 0
    while not stop.is_set():
        body = json.dumps({"instances": [sentences[i % len(sentences)]]})
        start = time.perf_counter()
        try:
            connection.request("POST", f"/v1/models/{server.model_name}:predict", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            connection.close()
            connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
        (latencies if ok else errors).append(time.perf_counter() - start)
        i += 1
    connection.close()


def grpc_client(server, sentences, stop, latencies, errors):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        i = 0
        while not stop.is_set():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = server.model_name
            request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([sentences[i % len(sentences)]]))
            start = time.perf_counter()
            try:
                stub.Predict(request, timeout=60)
                latencies.append(time.perf_counter() - start)
            except grpc.RpcError:
                errors.append(time.perf_counter() - start)
            i += 1


def measure(server, client, sentences, concurrency, seconds):
    stop = threading.Event()
    latencies, errors = [], []
    threads = [threading.Thread(target=client, args=(server, sentences[k:] + sentences[:k], stop, latencies, errors))
               for k in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - start
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies else (float("nan"),) * 2
    return len(latencies) / elapsed, p50, p99, len(errors)


def host_description() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", help="an export's <export_dir>/<model_name> (default: build a tiny one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (default 3)")
    args = parser.parse_args(argv)

    from keras_transformer.serving import ModelServer

    with tempfile.TemporaryDirectory() as scratch:
        if args.model_base_path:
            base_path, sentences = args.model_base_path, ["파일을 열 수 없습니다.", "어제 카페 갔었어 거기 사람 많더라"]
        else:
            base_path, sentences = build_tiny_export(scratch)
        rows, total_errors = [], 0
        for batching, settings in BATCHING.items():
            server = ModelServer(base_path, port=0, grpc_port=0, max_queue=1024, file_system_poll_wait_seconds=0,
                                 **settings).start()
            try:
                for api, client in (("REST", rest_client), ("gRPC", grpc_client)):
                    for concurrency in CONCURRENCY:
                        rate, p50, p99, errors = measure(server, client, sentences, concurrency, args.seconds)
                        total_errors += errors
                        rows.append(f"| {api} | {batching} | {concurrency} | {rate:.0f} | {p50:.1f} | {p99:.1f} | "
                                    f"{errors} |")
                        print(rows[-1], flush=True)
            finally:
                server.shutdown(grace=5)
    print(f"\nHost: {host_description()}; {args.seconds:g} s per row, one sentence per request.\n")
    print("| API | batching | concurrency | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if total_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
