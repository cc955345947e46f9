"""The TF Serving-compatible REST server (`keras_transformer.serving`), over real HTTP on 127.0.0.1.

One module-scoped export of a tiny untrained model (its translations are gibberish: what matters is that the
server answers exactly what the Keras `Translator` answers) and one module-scoped server on a free port.
"""

import argparse
import collections
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest

import keras

from keras_transformer import TransformerConfig
from keras_transformer.data import SubwordTokenizer, load_bundled_corpus
from keras_transformer.export import export_saved_model
from keras_transformer.model import build_transformer
from keras_transformer.serving import MicroBatcher, ModelServer, ServingError, add_serve_arguments, find_versions
from keras_transformer.serving.server import latest_version
from keras_transformer.translator import Translator, pad_batch

MAX_INSTANCES = 16
MAX_QUEUE = 64
MAX_INPUT_CHARS = 200
MAX_BODY_BYTES = 64 * 1024
MAX_OUTPUT_LENGTH = 16
NAME = "translator"
HTTP_TIMEOUT = 30


def make_export(export_dir):
    """Exports a tiny untrained translator to `<export_dir>/translator/1`: (translator, model base path, pool of
    source sentences, {sentence: (translation, score)}). Also used by tests/test_serving_hardening.py."""
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_global_policy("float32")
    dev = load_bundled_corpus("dev")
    head = dev.head(300)
    options = dict(vocab_size=600, byte_fallback=False, character_coverage=1.0, hard_vocab_limit=False)
    source_tokenizer = SubwordTokenizer.train(head.sources, **options)
    target_tokenizer = SubwordTokenizer.train(head.targets, **options)
    config = TransformerConfig.from_preset(
        "tiny", src_vocab_size=source_tokenizer.vocab_size, tgt_vocab_size=target_tokenizer.vocab_size
    )
    model = build_transformer(config)
    translator = Translator(model, config, source_tokenizer, target_tokenizer, max_output_length=MAX_OUTPUT_LENGTH)
    version_dir = export_saved_model(translator, export_dir, model_name=NAME)
    assert version_dir == export_dir / NAME / "1"
    pool = list(dict.fromkeys(dev.sources[300:348]))  # sentences the tokenizers did not see, deduplicated
    with warnings.catch_warnings():  # one of them is truncated to max_length (the export truncates it alike)
        warnings.simplefilter("ignore", UserWarning)
        translations, scores = translator.translate(pool, return_scores=True)
    reference = {source: (text, score) for source, text, score in zip(pool, translations, scores)}
    return translator, export_dir / NAME, pool, reference


_SHARED = {}


def shared_export(tmp_path_factory):
    """`make_export` once per test session, shared by the serving test modules (tests must not write into it)."""
    if "export" not in _SHARED:
        _SHARED["export"] = make_export(tmp_path_factory.mktemp("exports"))
    return _SHARED["export"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(translator, model base path, pool of source sentences, {sentence: (translation, score)})."""
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported):
    _, base_path, _, _ = exported
    server = ModelServer(
        base_path,
        NAME,
        port=0,
        max_batch_size=32,
        batch_timeout_ms=5,
        max_queue=MAX_QUEUE,
        max_input_chars=MAX_INPUT_CHARS,
        max_instances=MAX_INSTANCES,
        max_body_bytes=MAX_BODY_BYTES,
        request_timeout_s=HTTP_TIMEOUT,
    ).start()
    yield server
    server.shutdown()
    assert not server._thread.is_alive()


def call(server, method, path, body=None, timeout=HTTP_TIMEOUT):
    """(status, parsed JSON body) of one HTTP request; `body`: an object (sent as JSON) or raw bytes."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(server.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, content_type = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, raw, content_type = error.code, error.read(), error.headers["Content-Type"]
    assert content_type == "application/json", raw
    assert b"Traceback" not in raw, raw
    return status, json.loads(raw.decode("utf-8"))


def predict(server, body, path=f"/v1/models/{NAME}:predict"):
    return call(server, "POST", path, body)


def assert_translations(texts, scores, sources, reference):
    assert texts == [reference[s][0] for s in sources]  # exact string equality with the Keras translator
    np.testing.assert_allclose(scores, [reference[s][1] for s in sources], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ status, metadata
def test_reference_translations_differ(exported):
    """Guards the equality tests: a model translating everything alike could not catch mixed-up batches."""
    _, _, pool, reference = exported
    assert len({text for text, _ in reference.values()}) > len(pool) // 2


def test_model_status(server):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert call(server, "GET", f"/v1/models/{NAME}") == (200, expected)
    assert call(server, "GET", f"/v1/models/{NAME}/versions/1") == (200, expected)


def test_metadata(server):
    status, body = call(server, "GET", f"/v1/models/{NAME}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "translate_ids"} <= set(defs)

    def dims(info):
        return [int(d["size"]) for d in info["tensor_shape"]["dim"]]

    default, ids = defs["serving_default"], defs["translate_ids"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["inputs"]["dtype"] == "DT_STRING" and dims(default["inputs"]["inputs"]) == [-1]
    assert default["outputs"]["translations"]["dtype"] == "DT_STRING"
    assert default["outputs"]["scores"]["dtype"] == "DT_FLOAT" and dims(default["outputs"]["scores"]) == [-1]
    assert ids["inputs"]["encoder_inputs"]["dtype"] == "DT_INT32"
    assert dims(ids["inputs"]["encoder_inputs"]) == [-1, -1]
    assert ids["outputs"]["output_ids"]["dtype"] == "DT_INT32"
    assert dims(ids["outputs"]["output_ids"]) == [-1, MAX_OUTPUT_LENGTH]
    assert call(server, "GET", f"/v1/models/{NAME}/versions/1/metadata")[1] == body


# ---------------------------------------------------------------------------------------------- predict
def test_predict_row_format_matches_keras_translator(server, exported):
    _, _, pool, reference = exported
    sources = pool[:12]
    status, body = predict(server, {"instances": sources})
    assert status == 200
    assert len(body["predictions"]) == len(sources)
    assert all(set(p) == {"translations", "scores"} for p in body["predictions"])
    assert_translations([p["translations"] for p in body["predictions"]], [p["scores"] for p in body["predictions"]],
                        sources, reference)


def test_predict_row_objects_and_version_url(server, exported):
    _, _, pool, reference = exported
    sources = pool[12:17]
    body = {"signature_name": "serving_default", "instances": [{"inputs": s} for s in sources]}
    status, answer = predict(server, body, path=f"/v1/models/{NAME}/versions/1:predict")
    assert status == 200
    predictions = answer["predictions"]
    texts, scores = [p["translations"] for p in predictions], [p["scores"] for p in predictions]
    assert_translations(texts, scores, sources, reference)


@pytest.mark.parametrize("named", [False, True], ids=["list", "named"])
def test_predict_columnar_format(server, exported, named):
    _, _, pool, reference = exported
    sources = pool[17:25]
    status, answer = predict(server, {"inputs": {"inputs": sources} if named else sources})
    assert status == 200
    assert set(answer) == {"outputs"}
    assert_translations(answer["outputs"]["translations"], answer["outputs"]["scores"], sources, reference)


def restored(translator, sources, ids):
    """What a client of `translate_ids` does after decoding: detokenize, then put the sources' placeholders back."""
    _, placeholders = translator.preprocessor.encode_sources(sources, return_placeholders=True)
    return translator.preprocessor.restore([translator.target_tokenizer.decode(row) for row in ids], placeholders)


@pytest.mark.parametrize("row_format", [True, False], ids=["rows", "columns"])
def test_predict_translate_ids(server, exported, row_format):
    """Client-side tokenization: ragged id lists in, the Keras translator's ids out."""
    translator, _, pool, reference = exported
    sources = pool[25:31]
    rows = translator.encode_sources(sources)  # ids + END, different lengths (the server pads)
    expected_ids, expected_scores = translator.translate_ids(pad_batch(rows, max_length=translator.config.max_length))
    if row_format:
        status, answer = predict(server, {"signature_name": "translate_ids",
                                          "instances": [{"encoder_inputs": r} for r in rows]})
        ids = [p["output_ids"] for p in answer["predictions"]]
        scores = [p["scores"] for p in answer["predictions"]]
    else:
        status, answer = predict(server, {"signature_name": "translate_ids", "inputs": {"encoder_inputs": rows}})
        ids, scores = answer["outputs"]["output_ids"], answer["outputs"]["scores"]
    assert status == 200
    assert np.array(ids).shape == (len(sources), MAX_OUTPUT_LENGTH)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    assert restored(translator, sources, ids) == [reference[s][0] for s in sources]


def test_large_request_is_split_over_batches(exported, server):
    """More instances than max_batch_size in one request: split, reassembled in order."""
    _, _, pool, reference = exported
    sources = (pool * 2)[:MAX_INSTANCES]
    before = server.stats()
    server.batcher.max_batch_size, previous = 5, server.batcher.max_batch_size
    try:
        status, answer = predict(server, {"inputs": sources})
    finally:
        server.batcher.max_batch_size = previous
    assert status == 200
    assert_translations(answer["outputs"]["translations"], answer["outputs"]["scores"], sources, reference)
    assert server.stats()["batches"] - before["batches"] >= -(-MAX_INSTANCES // 5)


# ----------------------------------------------------------------------------------------------- errors
TOO_LONG = "가" * (MAX_INPUT_CHARS + 1)
ERROR_CASES = {
    "malformed JSON": ("POST", f"/v1/models/{NAME}:predict", b'{"instances": ["abc"', 400),
    "not UTF-8": ("POST", f"/v1/models/{NAME}:predict", b'{"instances": ["\xff\xfe"]}', 400),
    "empty body": ("POST", f"/v1/models/{NAME}:predict", b"", 400),
    "body not an object": ("POST", f"/v1/models/{NAME}:predict", [1, 2], 400),
    "no instances or inputs": ("POST", f"/v1/models/{NAME}:predict", {"signature_name": "serving_default"}, 400),
    "both instances and inputs": ("POST", f"/v1/models/{NAME}:predict", {"instances": ["a"], "inputs": ["a"]}, 400),
    "unknown key": ("POST", f"/v1/models/{NAME}:predict", {"instance": ["a"]}, 400),
    "instances not a list": ("POST", f"/v1/models/{NAME}:predict", {"instances": "hello"}, 400),
    "numbers for strings": ("POST", f"/v1/models/{NAME}:predict", {"instances": [1, 2]}, 400),
    "null for a string": ("POST", f"/v1/models/{NAME}:predict", {"inputs": ["ok", None]}, 400),
    "list for a string": ("POST", f"/v1/models/{NAME}:predict", {"instances": [["nested"]]}, 400),
    "wrong input name": ("POST", f"/v1/models/{NAME}:predict", {"instances": [{"text": "a"}]}, 400),
    "mixed objects and values": ("POST", f"/v1/models/{NAME}:predict", {"instances": [{"inputs": "a"}, "b"]}, 400),
    "empty list": ("POST", f"/v1/models/{NAME}:predict", {"instances": []}, 400),
    "empty columnar list": ("POST", f"/v1/models/{NAME}:predict", {"inputs": {"inputs": []}}, 400),
    "too many instances": ("POST", f"/v1/models/{NAME}:predict", {"instances": ["a"] * (MAX_INSTANCES + 1)}, 400),
    "too long string": ("POST", f"/v1/models/{NAME}:predict", {"instances": ["ok", TOO_LONG]}, 400),
    "lone surrogate": ("POST", f"/v1/models/{NAME}:predict", b'{"instances": ["\\ud800"]}', 400),
    "unknown signature": ("POST", f"/v1/models/{NAME}:predict", {"signature_name": "nope", "instances": ["a"]}, 400),
    "signature not a string": ("POST", f"/v1/models/{NAME}:predict", {"signature_name": 1, "instances": ["a"]}, 400),
    "strings for ids": ("POST", f"/v1/models/{NAME}:predict",
                        {"signature_name": "translate_ids", "instances": ["a b c"]}, 400),
    "floats for ids": ("POST", f"/v1/models/{NAME}:predict",
                       {"signature_name": "translate_ids", "instances": [[5.5, 3]]}, 400),
    "booleans for ids": ("POST", f"/v1/models/{NAME}:predict",
                         {"signature_name": "translate_ids", "instances": [[True, 3]]}, 400),
    "negative id": ("POST", f"/v1/models/{NAME}:predict",
                    {"signature_name": "translate_ids", "instances": [[-1, 3]]}, 400),
    "empty id list": ("POST", f"/v1/models/{NAME}:predict",
                      {"signature_name": "translate_ids", "inputs": [[5, 3], []]}, 400),
    "id outside the vocabulary": ("POST", f"/v1/models/{NAME}:predict",
                                  {"signature_name": "translate_ids", "instances": [[5, 100000, 3]]}, 400),
    "ids longer than max_length": ("POST", f"/v1/models/{NAME}:predict",
                                   {"signature_name": "translate_ids", "instances": [[5] * 100 + [3]]}, 400),
    "body too large": ("POST", f"/v1/models/{NAME}:predict", b" " * (MAX_BODY_BYTES + 1), 413),
    "unknown model (predict)": ("POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404),
    "unknown model (status)": ("GET", "/v1/models/nope", None, 404),
    "unknown model (metadata)": ("GET", "/v1/models/nope/metadata", None, 404),
    "unknown version (predict)": ("POST", f"/v1/models/{NAME}/versions/2:predict", {"instances": ["a"]}, 404),
    "unknown version (status)": ("GET", f"/v1/models/{NAME}/versions/7", None, 404),
    "non-numeric version": ("GET", f"/v1/models/{NAME}/versions/latest", None, 404),
    "version label": ("POST", f"/v1/models/{NAME}/labels/stable:predict", {"instances": ["a"]}, 404),
    "unknown path": ("GET", "/v2/whatever", None, 404),
    "unknown verb": ("POST", f"/v1/models/{NAME}:explain", {"instances": ["a"]}, 404),
    "classify": ("POST", f"/v1/models/{NAME}:classify", {"examples": []}, 400),
    "GET predict": ("GET", f"/v1/models/{NAME}:predict", None, 405),
    "POST status": ("POST", f"/v1/models/{NAME}", {"instances": ["a"]}, 405),
    "PUT metadata": ("PUT", f"/v1/models/{NAME}/metadata", b"{}", 405),
    "DELETE model": ("DELETE", f"/v1/models/{NAME}", None, 405),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_json(server, case):
    method, path, body, expected = ERROR_CASES[case]
    status, answer = call(server, method, path, body)
    assert status == expected, answer
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"]


def test_bad_request_fails_alone_in_a_batch(server, exported):
    """A request the model rejects (ids outside the vocabulary) batched with good ones: only it fails."""
    translator, _, pool, reference = exported
    rows = translator.encode_sources(pool[:4])
    bad = {"signature_name": "translate_ids", "instances": [[5, 100000, 3]]}
    results = {}
    server.batcher.pause()  # queue all three, so that they land in one batch
    try:
        threads = [
            threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, predict(server, b)))
            for k, b in (("good1", {"signature_name": "translate_ids", "instances": rows[:2]}), ("bad", bad),
                         ("good2", {"signature_name": "translate_ids", "instances": rows[2:]}))
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: server.stats()["queued"] == 5)
    finally:
        server.batcher.resume()
    for thread in threads:
        thread.join(HTTP_TIMEOUT)
    assert results["bad"][0] == 400 and "vocabulary" in results["bad"][1]["error"]
    ids = [p["output_ids"] for p in results["good1"][1]["predictions"] + results["good2"][1]["predictions"]]
    assert restored(translator, pool[:4], ids) == [reference[s][0] for s in pool[:4]]


def test_raw_http_errors_are_json(server):
    """Requests http.server itself refuses (unknown method) are answered in JSON too."""
    with socket.create_connection((server.host, server.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(f"BREW /v1/models/{NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501") and b"application/json" in head
    assert "error" in json.loads(body)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_full_queue_answers_503(server, exported):
    _, _, pool, reference = exported
    sources = (pool * 2)[:MAX_INSTANCES]
    results = []
    server.batcher.pause()
    try:
        threads = [threading.Thread(target=lambda: results.append(predict(server, {"instances": sources})))
                   for _ in range(MAX_QUEUE // MAX_INSTANCES)]
        for thread in threads:
            thread.start()
        wait_for(lambda: server.stats()["queued"] == MAX_QUEUE)
        status, answer = predict(server, {"instances": ["one more"]})
        assert status == 503
        assert "queue is full" in answer["error"]
    finally:
        server.batcher.resume()
    for thread in threads:
        thread.join(HTTP_TIMEOUT)
    assert [status for status, _ in results] == [200] * len(threads)
    for _, answer in results:
        assert [p["translations"] for p in answer["predictions"]] == [reference[s][0] for s in sources]
    assert server.stats()["rejected"] >= 1


# ------------------------------------------------------------------------------------------------- load
def test_concurrent_load_is_batched_and_correct(server, exported):
    """8 client threads, 240 requests (single and multi-instance, row and columnar): all 200 and equal to the
    Keras translator, and the worker ran fewer batches than instances."""
    _, _, pool, reference = exported
    threads_count, per_thread = 8, 30
    before = server.stats()
    failures, answered = [], [0]
    lock = threading.Lock()

    def client(seed):
        rng = random.Random(seed)
        for i in range(per_thread):
            sources = rng.sample(pool, 1 if i % 2 == 0 else rng.randint(2, 6))
            columnar = i % 3 == 0
            status, answer = predict(server, {"inputs": sources} if columnar else {"instances": sources})
            if columnar:
                texts = answer.get("outputs", {}).get("translations")
            else:
                texts = [p["translations"] for p in answer.get("predictions", [])]
            with lock:
                answered[0] += 1
                if status != 200 or texts != [reference[s][0] for s in sources]:
                    failures.append((status, sources, answer))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - start
    assert not any(thread.is_alive() for thread in threads)
    assert answered[0] == threads_count * per_thread
    assert not failures, failures[:3]
    after = server.stats()
    batches = after["batches"] - before["batches"]
    instances = after["instances"] - before["instances"]
    assert after["requests"] - before["requests"] == threads_count * per_thread
    sizes = collections.Counter(after["batch_sizes"])
    sizes.subtract(before["batch_sizes"])
    assert batches < instances
    assert max(size for size, count in sizes.items() if count > 0) > 1
    print(f"\nload test: {answered[0]} requests, {instances} instances in {elapsed:.2f} s = "
          f"{answered[0] / elapsed:.0f} requests/s, {instances / elapsed:.0f} instances/s; {batches} batches, "
          f"mean batch size {instances / batches:.1f}, batch sizes {dict(sorted((+sizes).items()))}")


# --------------------------------------------------------------------------------- units (no server)
def test_version_discovery(tmp_path):
    for name in ("1", "3", "12", "5", ".13-staging", "latest"):
        (tmp_path / name).mkdir()
    for name in ("1", "3", "12", ".13-staging", "latest"):  # "5" has no saved_model.pb: half-copied
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert find_versions(tmp_path) == [1, 3, 12]
    assert latest_version(tmp_path) == 12
    with pytest.raises(FileNotFoundError, match="point --model-base-path at one of them"):
        latest_version(tmp_path.parent)
    with pytest.raises(FileNotFoundError):
        find_versions(tmp_path / "missing")


def test_micro_batcher_batches_and_bounds():
    calls = []
    gate = threading.Event()

    def run(signature, values):
        gate.wait(10)
        calls.append(len(values))
        return {"double": np.array(values) * 2}

    batcher = MicroBatcher(run, max_batch_size=4, batch_timeout_ms=50, max_queue=6)
    try:
        batcher.pause()
        tasks = [batcher.submit("s", [1, 2, 3]), batcher.submit("s", [4, 5])]
        with pytest.raises(ServingError) as full:
            batcher.submit("s", [6, 7])
        assert full.value.status == 503
        batcher.resume()
        gate.set()
        assert [int(v) for v in batcher.wait(tasks[0], 10)["double"]] == [2, 4, 6]
        assert [int(v) for v in batcher.wait(tasks[1], 10)["double"]] == [8, 10]
        assert calls == [4, 1]  # the second request was split over two batches
        stats = batcher.stats()
        assert (stats["batches"], stats["instances"], stats["rejected"], stats["queued"]) == (2, 5, 1, 0)
        batcher.pause()
        late = batcher.submit("s", [8])
        with pytest.raises(ServingError) as timed_out:
            batcher.wait(late, timeout=0.05)
        assert timed_out.value.status == 504
        assert batcher.stats()["queued"] == 0  # the abandoned request left the queue
    finally:
        batcher.close()
    with pytest.raises(ServingError) as closed:
        batcher.submit("s", [1])
    assert closed.value.status == 503


def test_cli_arguments():
    parser = add_serve_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model-base-path", "exports/translator", "--port", "9000", "--max-batch-size", "8"])
    assert (args.model_base_path, args.model_name, args.host, args.port) == (
        "exports/translator", NAME, "127.0.0.1", 9000)
    assert (args.max_batch_size, args.batch_timeout_ms, args.max_queue, args.max_input_chars, args.max_instances) == (
        8, 5.0, 256, 1000, 64)
    assert args.func.__name__ == "run_serve"


def test_server_rejects_bad_settings(exported):
    _, base_path, _, _ = exported
    with pytest.raises(ValueError, match="max_instances"):
        ModelServer(base_path, port=0, max_instances=10, max_queue=5, warmup=False)
    with pytest.raises(FileNotFoundError):
        ModelServer(base_path.parent, port=0)
