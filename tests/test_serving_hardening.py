"""`keras-transformer serve` beyond the REST contract: TF Serving's gRPC API, crafted and slow clients, the
connection cap, version switches under load, Prometheus metrics, SIGTERM and misconfiguration.

All traffic goes to 127.0.0.1; every loop is bounded in count and time. The export is the tiny untrained one of
tests/test_serving.py (`make_export`).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from test_serving import NAME, call, predict, shared_export

from keras_transformer.data.special_ids import END_ID
from keras_transformer.serving import ModelServer, serve
from keras_transformer.translator import pad_batch

MAX_INSTANCES = 16
MAX_QUEUE = 64
MAX_BODY_BYTES = 64 * 1024
DEADLINE_S = 1.5  # header and body deadlines of the test server
MAX_CONNECTIONS = 1010
IDLE_CONNECTIONS = 1000
RPC_TIMEOUT = 30


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported):
    _, base_path, _, _ = exported
    server = ModelServer(
        base_path, NAME, port=0, grpc_port=0, max_queue=MAX_QUEUE, max_instances=MAX_INSTANCES,
        max_input_chars=200, max_body_bytes=MAX_BODY_BYTES, header_timeout_s=DEADLINE_S, body_timeout_s=DEADLINE_S,
        max_connections=MAX_CONNECTIONS, file_system_poll_wait_seconds=0,
    ).start()
    yield server
    server.shutdown(grace=5)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


def grpc_predict(channel, sources=None, signature="", name=NAME, version=None, inputs=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, tensor in (inputs or {"inputs": tf.make_tensor_proto(sources)}).items():
        request.inputs[key].CopyFrom(tensor)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=RPC_TIMEOUT)


def texts_of(response):
    return [t.decode("utf-8") for t in tf.make_ndarray(response.outputs["translations"])]


# --------------------------------------------------------------------------------------------------- gRPC
def test_grpc_predict_equals_rest_and_keras(server, channel, exported):
    _, _, pool, reference = exported
    sources = pool[:10]
    response = grpc_predict(channel, sources)
    assert texts_of(response) == [reference[s][0] for s in sources]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), [reference[s][1] for s in sources],
                               rtol=1e-4, atol=1e-4)
    assert (response.model_spec.name, response.model_spec.version.value) == (NAME, 1)
    assert response.model_spec.signature_name == "serving_default"
    status, answer = predict(server, {"instances": sources})
    assert status == 200 and [p["translations"] for p in answer["predictions"]] == texts_of(response)


def test_grpc_translate_ids(channel, exported):
    translator, _, pool, _ = exported
    rows = pad_batch(translator.encode_sources(pool[10:16]), max_length=translator.config.max_length)
    expected_ids, expected_scores = translator.translate_ids(rows)
    response = grpc_predict(channel, signature="translate_ids", version=1,
                            inputs={"encoder_inputs": tf.make_tensor_proto(np.asarray(rows, dtype=np.int32))})
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["output_ids"]), expected_ids)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), expected_scores, rtol=1e-4, atol=1e-4)


def test_grpc_metadata_and_status(server, channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = NAME
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert {"serving_default", "translate_ids"} <= set(signature_defs.signature_def)
    assert signature_defs.signature_def["serving_default"].inputs["inputs"].dtype == tf.string.as_datatype_enum
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = NAME
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=10)
    (version_status,) = status.model_version_status
    assert version_status.version == 1 and version_status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _tensor(dtype, dims, **values):
    proto = tf.make_tensor_proto([], dtype=dtype)
    proto.tensor_shape.Clear()
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    for field, content in values.items():
        getattr(proto, field).extend(content)
    return proto


GRPC_ERRORS = {
    "unknown model": (dict(sources=["a"], name="nope"), grpc.StatusCode.NOT_FOUND),
    "unknown version": (dict(sources=["a"], version=7), grpc.StatusCode.NOT_FOUND),
    "unknown signature": (dict(sources=["a"], signature="beam"), grpc.StatusCode.INVALID_ARGUMENT),
    "floats for strings": (dict(inputs={"inputs": tf.make_tensor_proto([1.5])}), grpc.StatusCode.INVALID_ARGUMENT),
    "wrong input name": (dict(inputs={"text": tf.make_tensor_proto(["a"])}), grpc.StatusCode.INVALID_ARGUMENT),
    "rank 2 strings": (dict(inputs={"inputs": tf.make_tensor_proto([["a"]])}), grpc.StatusCode.INVALID_ARGUMENT),
    "empty batch": (dict(inputs={"inputs": tf.make_tensor_proto([], dtype=tf.string)}),
                    grpc.StatusCode.INVALID_ARGUMENT),
    "too many instances": (dict(sources=["a"] * (MAX_INSTANCES + 1)), grpc.StatusCode.INVALID_ARGUMENT),
    "huge claimed shape": (dict(signature="translate_ids", inputs={"encoder_inputs": _tensor(tf.int32, [10**12, 3])}),
                           grpc.StatusCode.INVALID_ARGUMENT),
    "more values than the shape": (dict(inputs={"inputs": _tensor(tf.string, [2], string_val=[b"a", b"b", b"c"])}),
                             grpc.StatusCode.INVALID_ARGUMENT),
    "not UTF-8": (dict(inputs={"inputs": tf.make_tensor_proto([b"\xff\xfe"])}), grpc.StatusCode.INVALID_ARGUMENT),
    "negative id": (dict(signature="translate_ids", inputs={"encoder_inputs": tf.make_tensor_proto([[-1, END_ID]])}),
                    grpc.StatusCode.INVALID_ARGUMENT),
    "id outside the vocabulary": (dict(signature="translate_ids",
                                       inputs={"encoder_inputs": tf.make_tensor_proto([[5, 100000, END_ID]])}),
                                  grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("case", list(GRPC_ERRORS))
def test_grpc_errors_map_to_status_codes(channel, case):
    kwargs, code = GRPC_ERRORS[case]
    with pytest.raises(grpc.RpcError) as error:
        grpc_predict(channel, **kwargs)
    assert error.value.code() == code, error.value.details()
    assert error.value.details()


def test_grpc_full_queue_is_resource_exhausted(server, channel):
    server.batcher.pause()
    try:
        filler = server.batcher.submit((server.model, "serving_default"), ["a"] * MAX_QUEUE)
        with pytest.raises(grpc.RpcError) as error:
            grpc_predict(channel, ["one more"])
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.batcher.resume()
    assert len(server.batcher.wait(filler, RPC_TIMEOUT)["translations"]) == MAX_QUEUE


# ---------------------------------------------------------------------------------- crafted HTTP requests
def raw_exchange(server, data, timeout=10.0):
    """Sends raw bytes, reads until the server closes or a full answer arrived: (status, headers, body)."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock, timeout)


def read_answer(sock, timeout):
    raw, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep:
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length:")]
            if length and len(body) >= length[0]:
                break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        return None, {}, b""  # closed without an answer
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def http(method, target, headers=(), body=b""):
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def post(body, target=None):
    """A predict POST with a correct Content-Length."""
    return http("POST", target or PREDICT, [f"Content-Length: {len(body)}"]) + body


PREDICT = f"/v1/models/{NAME}:predict"
GOOD = b'{"instances": ["a"]}'
CRAFTED = {
    "POST without Content-Length": (http("POST", PREDICT), 411),
    "Content-Length +38": (http("POST", PREDICT, ["Content-Length: +20"]) + GOOD, 400),
    "two different Content-Lengths": (http("POST", PREDICT, ["Content-Length: 20", "Content-Length: 21"]) + GOOD, 400),
    "Content-Length and chunked": (http("POST", PREDICT, ["Content-Length: 20", "Transfer-Encoding: chunked"])
                                   + GOOD, 400),
    "huge Content-Length": (http("POST", PREDICT, ["Content-Length: " + "9" * 30]) + GOOD, 400),
    "negative Content-Length": (http("POST", PREDICT, ["Content-Length: -1"]), 400),
    "body far too large (headers only)": (http("POST", PREDICT, [f"Content-Length: {10**9}"]), 413),
    "chunked body too large": (http("POST", PREDICT, ["Transfer-Encoding: chunked"])
                               + (b"8000\r\n" + b" " * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n", 413),
    "huge version": (http("GET", f"/v1/models/{NAME}/versions/" + "9" * 5000), 404),
    "version beyond int64": (http("GET", f"/v1/models/{NAME}/versions/" + "9" * 19), 404),
    "non-ASCII digit version": (http("GET", f"/v1/models/{NAME}/versions/%D9%A1"), 404),
    "superscript version (raw UTF-8)": (http("GET", f"/v1/models/{NAME}/versions/\u00b2"), 400),
    "lone surrogate in the path": (http("GET", "/v1/models/%ED%A0%80"), 400),
    "lone surrogate in signature_name": (post(b'{"signature_name": "\\ud800", "instances": ["a"]}'), 400),
    "deep nesting": (post(b"[" * 60000), 400),
    "huge integer": (post(b'{"instances": [' + b"1" * 5000 + b']}'), 400),
    "huge id": (post(b'{"signature_name": "translate_ids", "instances": [[' + b"9" * 40 + b', 3]]}'), 400),
    "wrong type for instances": (post(b'{"instances": {"inputs": 5}}'), 400),
    "header line too long": (http("GET", f"/v1/models/{NAME}", ["X-Long: " + "a" * 10000]), 400),
    "too many headers": (http("GET", f"/v1/models/{NAME}", [f"X-{i}: a" for i in range(300)]), 400),
    "not HTTP": (b"hello there\r\n\r\n", 400),
    "bad HTTP version": (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_requests_get_4xx_json(server, case):
    data, expected = CRAFTED[case]
    status, headers, body = raw_exchange(server, data)
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"error"} and answer["error"]


def test_absolute_form_url_is_served(server):
    status, headers, body = raw_exchange(server, http("GET", f"http://127.0.0.1:{server.port}/v1/models/{NAME}"))
    assert status == 200 and json.loads(body)["model_version_status"][0]["version"] == "1"


def test_oversized_body_is_refused_before_it_is_sent(server):
    """Only the headers of a 1 GB body: the 413 comes at once, the body is never waited for."""
    start = time.monotonic()
    status, _, _ = raw_exchange(server, http("POST", PREDICT, [f"Content-Length: {10**9}"]), timeout=5)
    assert status == 413 and time.monotonic() - start < DEADLINE_S


# ------------------------------------------------------------------------------------------ slow clients
@pytest.mark.parametrize("partial", [b"GET /v1/mod", http("POST", PREDICT, ["Content-Length: 100"]) + b'{"inst'],
                         ids=["headers", "body"])
def test_slow_client_gets_408_at_the_deadline(server, partial):
    start = time.monotonic()
    status, headers, body = raw_exchange(server, partial, timeout=DEADLINE_S + 5)
    elapsed = time.monotonic() - start
    assert status == 408 and "error" in json.loads(body)
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 2


def test_thousand_idle_and_trickling_connections(server, exported):
    """1,000 connections open (half idle, half trickling a request's headers): a normal client gets its answer
    in normal time; connections beyond max_connections get 503; all of them are closed by the deadline."""
    _, _, pool, reference = exported
    start = time.monotonic()
    assert predict(server, {"instances": pool[:2]})[0] == 200
    normal = time.monotonic() - start
    sockets = []
    try:
        for i in range(IDLE_CONNECTIONS):
            sock = socket.create_connection((server.host, server.port), timeout=10)
            if i % 2:
                sock.sendall(b"GET /v1/models/")
            sockets.append(sock)
        for sock in sockets[1::2]:
            sock.sendall(b"t")  # trickle
        start = time.monotonic()
        status, answer = predict(server, {"instances": pool[:2]})
        elapsed = time.monotonic() - start
        assert status == 200 and [p["translations"] for p in answer["predictions"]] == [reference[s][0]
                                                                                      for s in pool[:2]]
        assert elapsed < max(1.0, 4 * normal), (elapsed, normal)
        extra = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(20)]
        sockets += extra
        refused = [read_answer(sock, 5)[0] for sock in extra]
        assert refused.count(503) >= 10, refused
        status, _, body = read_answer(sockets[1], DEADLINE_S + 5)  # a trickler, cut at the header deadline
        assert status == 408, body
        sockets[0].settimeout(DEADLINE_S + 5)
        assert sockets[0].recv(1) == b""  # an idle one, closed without an answer
    finally:
        for sock in sockets:
            sock.close()


# ------------------------------------------------------------------------------------------------ metrics
def test_prometheus_metrics(server, channel, exported):
    _, _, pool, _ = exported
    assert predict(server, {"instances": pool[:3]})[0] == 200
    assert predict(server, {"instances": []})[0] == 400
    grpc_predict(channel, pool[:2])
    with urllib.request.urlopen(server.url + "/monitoring/prometheus/metrics", timeout=10) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    assert value("keras_transformer_serving_requests_total", api="rest", endpoint="predict", status="200") >= 1
    assert value("keras_transformer_serving_requests_total", api="rest", endpoint="predict", status="400") >= 1
    assert value("keras_transformer_serving_requests_total", api="grpc", endpoint="predict", status="OK") >= 1
    assert value("keras_transformer_serving_request_latency_seconds_count", api="rest", endpoint="predict") >= 2
    assert value("keras_transformer_serving_batch_size_count") >= 2
    assert ("keras_transformer_serving_queue_depth", ()) in samples
    assert value("keras_transformer_serving_model_version", model=NAME) == 1


# --------------------------------------------------------------------------------------- version switches
def copy_version(source, target, pause_s, poll):
    """Writes version `target` file by file as a slow copy would: the SavedModel graph and assets first, the
    variables `pause_s` later, calling `poll()` in between (it must not see the half-written version)."""
    target.mkdir()
    shutil.copy2(source / "saved_model.pb", target / "saved_model.pb")
    shutil.copytree(source / "assets", target / "assets")
    deadline = time.monotonic() + pause_s
    while time.monotonic() < deadline:
        poll()
        time.sleep(0.05)
    shutil.copytree(source / "variables", target / "variables")


def test_new_version_switches_under_load_without_errors(exported, tmp_path):
    """A bounded load (REST and gRPC) runs while version 2 is written: no request fails, the half-written
    version is never loaded, answers come from version 2 after the switch, version 1 is unloaded, and a corrupt
    version 3 is skipped while version 2 keeps serving."""
    _, base_path, pool, reference = exported
    base = tmp_path / NAME
    shutil.copytree(base_path / "1", base / "1")
    server = ModelServer(base, NAME, port=0, grpc_port=0, file_system_poll_wait_seconds=0.1).start()
    errors, rest_answers, grpc_versions = [], [], []
    stop = threading.Event()

    def rest_client():
        for i in range(2000):
            if stop.is_set():
                return
            sources = [pool[i % len(pool)]]
            status, answer = predict(server, {"instances": sources})
            if status != 200:
                errors.append((status, answer))
            else:
                rest_answers.append((answer["predictions"][0]["translations"], reference[sources[0]][0]))

    def grpc_client():
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            for i in range(2000):
                if stop.is_set():
                    return
                try:
                    grpc_versions.append(grpc_predict(channel, [pool[i % len(pool)]]).model_spec.version.value)
                except grpc.RpcError as error:
                    errors.append((error.code(), error.details()))

    threads = [threading.Thread(target=rest_client), threading.Thread(target=grpc_client)]
    try:
        for thread in threads:
            thread.start()

        def still_version_1():
            assert server.model.version == 1, "a half-written version was loaded"

        copy_version(base / "1", base / "2", pause_s=0.5, poll=still_version_1)
        deadline = time.monotonic() + 30
        while server.model.version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.model.version == 2
        switched_at = len(grpc_versions)
        (base / "3" / "variables").mkdir(parents=True)
        for name in ("saved_model.pb", "variables/variables.index"):
            (base / "3" / name).write_bytes(b"corrupt")
        time.sleep(0.6)  # a few polls: 3 fails to load, the load keeps running on 2
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    try:
        assert not errors, errors[:3]
        assert rest_answers and all(got == expected for got, expected in rest_answers)
        assert grpc_versions[0] == 1 and grpc_versions[-1] == 2 and len(grpc_versions) > switched_at
        assert sorted(grpc_versions) == grpc_versions  # never back to 1 once 2 answered
        assert server.model.version == 2
        assert call(server, "GET", f"/v1/models/{NAME}/metadata")[1]["model_spec"]["version"] == "2"
        status = call(server, "GET", f"/v1/models/{NAME}")[1]["model_version_status"]
        assert [s["version"] for s in status] == ["2"]
        assert call(server, "GET", f"/v1/models/{NAME}/versions/1")[0] == 404
    finally:
        server.shutdown(grace=5)


# -------------------------------------------------------------------------------- process and configuration
def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "keras_transformer.cli", "serve", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


@pytest.mark.parametrize("flags, message", [
    (["--batch-timeout-ms", "nan"], "--batch-timeout-ms must be a finite number"),
    (["--max-batch-size", "0"], "--max-batch-size must be a positive integer"),
], ids=["nan timeout", "zero batch size"])
def test_bad_settings_are_one_error_line(exported, flags, message):
    _, base_path, _, _ = exported
    result = run_cli("--model-base-path", str(base_path), *flags)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_is_one_error_line(tmp_path):
    result = run_cli("--model-base-path", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model base path"), result.stderr


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_port_in_use_is_a_clear_error(exported):
    """The REST port binds, the gRPC port is taken: a ValueError naming it, and the REST port is released."""
    _, base_path, _, _ = exported
    rest_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ModelServer(base_path, NAME, port=rest_port, grpc_port=port, warmup=False,
                             file_system_poll_wait_seconds=0)
        with pytest.raises(ValueError, match=f"cannot listen for gRPC on 127.0.0.1:{port}: "):
            server.start()
    with socket.socket() as again:
        again.bind(("127.0.0.1", rest_port))  # released by the failed start


def test_sigterm_answers_requests_already_received(exported):
    """`serve` (what the command runs) gets SIGTERM while requests wait in the batching queue: every one is
    answered 200, then it returns and the port is closed."""
    _, base_path, pool, reference = exported
    port = free_port()
    target = type("Target", (), {"url": f"http://127.0.0.1:{port}"})  # what `predict` needs
    results, problems = [], []

    def clients():
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if call(target, "GET", f"/v1/models/{NAME}", timeout=2)[0] == 200:
                        break
                except OSError:
                    time.sleep(0.05)
            threads = [threading.Thread(target=lambda k=k: results.append(
                (k, predict(target, {"instances": pool[k:k + 2]})))) for k in range(0, 8, 2)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the four requests (8 instances) are queued
                with urllib.request.urlopen(target.url + "/monitoring/prometheus/metrics", timeout=10) as response:
                    if "keras_transformer_serving_queue_depth 8.0" in response.read().decode():
                        break
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)
            for thread in threads:
                thread.join(30)
        except Exception as error:  # noqa: BLE001 - reported by the test thread
            problems.append(error)
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=clients)
    helper.start()
    serve(base_path, port=port, batch_timeout_ms=1000, warmup=False, file_system_poll_wait_seconds=0)
    helper.join(60)
    assert not problems, problems
    assert sorted(k for k, _ in results) == [0, 2, 4, 6]
    for k, (status, answer) in results:
        assert status == 200, answer
        assert [p["translations"] for p in answer["predictions"]] == [reference[s][0] for s in pool[k:k + 2]]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
