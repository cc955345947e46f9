"""`keras-transformer demo`: the JSON endpoints (run everywhere) and the page in a real headless Chromium.

One server on 127.0.0.1 (a free port) serves the tiny trained run for the whole module; every request goes there,
with a timeout. The browser test skips, saying why, where Debian's chromium / chromium-driver are missing, unless
KT_DEMO_REQUIRE_BROWSER=1 (set by CI), where it fails instead. KT_DEMO_SCREENSHOT_DIR=<dir> also writes the
full-page screenshot there as demo.png (docs/images/demo.png was made that way).
"""

import argparse
import io
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

SENTENCE = "파일을 열 수 없습니다"
BEAM = {"strategy": "beam", "beam_size": 4, "alpha": 0.6}  # the page's defaults, so the browser reuses the compiled loop
SAMPLE = {"strategy": "sample", "temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 7}
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def demo_url(tiny_run_dir):
    from keras_transformer.demo.app import DemoServer, create_app
    from keras_transformer.demo.model_access import DemoModel

    server = DemoServer(create_app(DemoModel.load(tiny_run_dir), default_sentence=SENTENCE)).start()
    yield server.url
    server.shutdown()


def call(url, path, body=None, raw=None, method=None):
    """(status, headers, body bytes) of one request; `body` is sent as JSON, `raw` as it is."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode("utf-8"))
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def call_json(url, path, body=None, **kwargs):
    status, headers, data = call(url, path, body, **kwargs)
    assert headers.get("Content-Type", "").startswith("application/json"), (status, data[:200])
    return status, json.loads(data)


def translate(url, **request):
    status, answer = call_json(url, "/api/translate", {"text": SENTENCE, **request})
    assert status == 200, answer
    return answer


# ------------------------------------------------------------------------------------------------ JSON API
@pytest.mark.parametrize("request_options", [{}, BEAM, SAMPLE], ids=["greedy", "beam", "sample"])
def test_translate_with_each_strategy(demo_url, request_options):
    answer = translate(demo_url, **request_options)
    assert answer["strategy"] == request_options.get("strategy", "greedy")
    assert answer["source_tokens"][-1] == "</s>" and not answer["truncated"]
    hypotheses = answer["hypotheses"]
    assert len(hypotheses) == request_options.get("beam_size", 1)
    for hypothesis in hypotheses:
        assert isinstance(hypothesis["text"], str) and np.isfinite(hypothesis["score"])
    scores = [h["score"] for h in hypotheses]
    assert scores == sorted(scores, reverse=True), "n-best must come best first"
    if request_options.get("strategy") == "sample":  # the same seed gives the same sample
        assert translate(demo_url, **request_options)["hypotheses"] == hypotheses


def test_attention_is_target_tokens_by_source_tokens(demo_url, tiny_run_dir):
    translation = translate(demo_url)
    target = translation["hypotheses"][0]["text"]
    status, answer = call_json(demo_url, "/api/attention", {"source": SENTENCE, "target": target})
    assert status == 200, answer
    config = json.loads((Path(tiny_run_dir) / "config.json").read_text())["model"]
    tokens = answer["tokens"]
    assert tokens["source"] == translation["source_tokens"]
    assert tokens["target"] == translation["hypotheses"][0]["tokens"] + ["</s>"]
    assert tokens["decoder_input"] == ["<s>"] + translation["hypotheses"][0]["tokens"]
    for kind, rows, columns in (
        ("cross_attention", "target", "source"),
        ("decoder_self_attention", "target", "decoder_input"),
        ("encoder_self_attention", "source", "source"),
    ):
        weights = np.asarray(answer["attention"][kind]["weights"])
        assert weights.shape == (config["num_layers"], config["num_heads"], len(tokens[rows]), len(tokens[columns])), kind
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=2e-3, err_msg=kind)  # softmax rows (4 decimals sent)
    decoder = np.asarray(answer["attention"]["decoder_self_attention"]["weights"])
    assert np.all(np.triu(decoder, k=1) == 0), "the look-ahead mask must hide later decoder positions"


def test_attention_of_an_empty_translation_has_one_row(demo_url):
    status, answer = call_json(demo_url, "/api/attention", {"source": SENTENCE, "target": ""})
    assert status == 200, answer
    assert answer["tokens"]["target"] == ["</s>"]
    assert np.asarray(answer["attention"]["cross_attention"]["weights"]).shape[2:] == (1, len(answer["tokens"]["source"]))


@pytest.mark.parametrize(
    "path, body, raw, status, message",
    [
        ("/api/translate", {"text": ""}, None, 400, "text is empty"),
        ("/api/translate", {"text": "   "}, None, 400, "text is empty"),
        ("/api/translate", {}, None, 400, "Missing field 'text'"),
        ("/api/translate", {"text": 3}, None, 400, "text must be a string"),
        ("/api/translate", {"text": "가" * 1001}, None, 400, "at most 1000"),
        ("/api/translate", {"text": SENTENCE, "strategy": "topk"}, None, 400, "strategy must be one of"),
        ("/api/translate", {"text": SENTENCE, "beam_size": 4}, None, 400, "Unknown field(s) beam_size for strategy 'greedy'"),
        ("/api/translate", {"text": SENTENCE, "strategy": "beam", "beam_size": 0}, None, 400, "beam_size must be in [1, 16]"),
        ("/api/translate", {"text": SENTENCE, "strategy": "beam", "beam_size": 2.5}, None, 400, "whole number"),
        ("/api/translate", {"text": SENTENCE, "strategy": "sample", "temperature": 0}, None, 400, "temperature must be in (0.0"),
        ("/api/translate", {"text": SENTENCE, "strategy": "sample", "top_p": 1.5}, None, 400, "top_p must be in"),
        ("/api/translate", {"text": SENTENCE, "strategy": "sample", "top_k": 100000}, None, 400, "target vocabulary size"),
        ("/api/translate", {"text": SENTENCE, "strategy": "sample", "seed": True}, None, 400, "seed must be a number"),
        ("/api/translate", None, b'{"text": "x", "strategy": "sample", "top_p": NaN}', 400, "must be finite"),
        ("/api/translate", None, b"{not json", 400, "must be JSON"),
        ("/api/translate", None, b"\xff\xfe", 400, "must be JSON"),
        ("/api/translate", ["a list"], None, 400, "must be a JSON object"),
        ("/api/translate", None, b"x" * (65 * 1024), 413, "Maximum request body size"),
        ("/api/attention", {"source": SENTENCE}, None, 400, "Missing field 'target'"),
        ("/api/attention", {"source": SENTENCE, "target": "", "layer": 1}, None, 400, "Unknown field(s) layer"),
        ("/api/no-such-endpoint", None, None, 404, "Not Found: GET /api/no-such-endpoint"),
    ],
)
def test_bad_input_is_answered_with_a_4xx_json_message(demo_url, path, body, raw, status, message):
    got_status, answer = call_json(demo_url, path, body, raw=raw)
    assert got_status == status
    assert message in answer["error"]


def test_wrong_method_is_a_json_405(demo_url):
    status, answer = call_json(demo_url, "/api/translate")  # GET
    assert status == 405 and "Method Not Allowed" in answer["error"]


def test_run_records(demo_url, tiny_run_dir):
    run = json.loads((Path(tiny_run_dir) / "config.json").read_text())
    history = json.loads((Path(tiny_run_dir) / "history.json").read_text())
    _, encoding = call_json(demo_url, "/api/positional-encoding")
    assert np.asarray(encoding["values"]).shape == (run["model"]["max_length"], run["model"]["d_model"])
    assert encoding["values"][0][:2] == [0.0, 1.0]  # sin(0), cos(0)

    _, schedule = call_json(demo_url, "/api/learning-rate")
    warmup = run["training"]["warmup_steps"]
    assert schedule["available"] and schedule["warmup_steps"] == warmup
    assert schedule["steps"][int(np.argmax(schedule["rates"]))] == warmup  # peaks at the end of warmup
    assert schedule["trained_steps"] == history[-1]["step"]
    np.testing.assert_allclose(schedule["recorded_rates"], [e["learning_rate"] for e in history], rtol=1e-6)

    _, curves = call_json(demo_url, "/api/training-curves")
    assert curves["epochs"] == [e["epoch"] for e in history]
    loss = next(p for p in curves["panels"] if p["title"] == "Loss")["series"][0]
    assert loss["name"] == "loss" and loss["values"] == [e["loss"] for e in history]


def test_page_loads_nothing_from_elsewhere(demo_url):
    from fontTools.ttLib import TTFont

    status, headers, page = call(demo_url, "/")
    assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    html = page.decode("utf-8")
    for asset in ("/static/demo.css", "/static/demo.js", "/vendor/plotly.min.js"):
        assert asset in html
        asset_status, _, data = call(demo_url, asset)
        assert asset_status == 200 and data
    script = call(demo_url, "/static/demo.js")[2].decode("utf-8") + call(demo_url, "/static/demo.css")[2].decode("utf-8")
    assert "http://" not in html + script and "https://" not in html + script and "//cdn" not in html + script

    status, headers, font = call(demo_url, "/fonts/NanumGothic.ttf")
    assert status == 200 and headers["Content-Type"] == "font/ttf"
    tables = TTFont(io.BytesIO(font)).keys()
    assert "glyf" in tables and "TSI3" not in tables  # Chromium refuses the font with its empty TSI3 table


def test_command_line_arguments():
    from keras_transformer.demo import add_demo_arguments, cmd_demo
    from keras_transformer.demo.command import _is_loopback

    parser = add_demo_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model", "runs/x"])
    assert (args.host, args.port, args.func) == ("127.0.0.1", 8080, cmd_demo)
    assert args.sentence == "어제 카페 갔었어 거기 사람 많더라"
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0")
    with pytest.raises(ValueError, match="--port"):
        cmd_demo(parser.parse_args(["--model", "runs/x", "--port", "70000"]))


# ------------------------------------------------------------------------------------------------- browser
def _browser_or_skip():
    """Selenium's Chrome driving Debian's chromium through Debian's chromedriver (nothing is downloaded)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = (f"browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver "
                  "(as .ci/run does)")
        if os.environ.get("KT_DEMO_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Headless as root in a container; the networking flags keep Chromium from calling Google's services
    # (this machine has no network, and the page must not need one).
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", "--lang=en-US"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _save_screenshot(driver, path):
    """The whole page, not only the window: the viewport is stretched to the page's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_page_in_headless_chromium(demo_url, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = _browser_or_skip()
    try:
        wait = WebDriverWait(driver, REQUEST_TIMEOUT_S)
        by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
        driver.get(demo_url + "/")
        wait.until(lambda d: by_id("status").get_attribute("data-state") in ("idle", "error"))
        assert by_id("status").get_attribute("data-state") == "idle", by_id("status").text
        assert by_id("source").get_attribute("value") == SENTENCE

        def shown():
            plot = by_id("attention-plot")
            return {key: plot.get_attribute(f"data-{key}") for key in ("rows", "columns", "kind", "layer", "head", "ready")}

        def translate_in_page(strategy):
            driver.find_element(By.CSS_SELECTOR, f'input[name="strategy"][value="{strategy}"]').click()
            by_id("translate-button").click()
            wait.until(lambda d: by_id("status").get_attribute("data-state") in ("ready", "error"))
            assert by_id("status").get_attribute("data-state") == "ready", by_id("status").text
            wait.until(lambda d: shown()["ready"] == "true")

        translate_in_page("beam")
        expected = translate(demo_url, **BEAM)  # the same request as the page's: the same n-best
        assert len(driver.find_elements(By.CSS_SELECTOR, "#hypotheses tbody tr")) == BEAM["beam_size"]
        best = expected["hypotheses"][0]
        assert by_id("translation").text == (best["text"] or "(empty translation)")

        # One heatmap row per target token (with </s>), one column per source token (with </s>), as data and as
        # drawn tick labels.
        rows, columns = len(best["tokens"]) + 1, len(expected["source_tokens"])
        assert shown() == {"rows": str(rows), "columns": str(columns), "kind": "cross_attention",
                           "layer": "1", "head": "0", "ready": "true"}
        labels = lambda axis: [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"#attention-plot g.{axis}tick")]  # noqa: E731
        assert labels("y") == best["tokens"] + ["</s>"]  # plotly must not read "</s>" as a closing tag
        assert labels("x") == expected["source_tokens"]
        z_of = lambda: driver.execute_script("return document.getElementById('attention-plot').data[0].z")  # noqa: E731
        last_layer_first_head = z_of()

        Select(by_id("layer")).select_by_value("0")
        Select(by_id("head")).select_by_value("2")
        wait.until(lambda d: shown()["layer"] == "0" and shown()["head"] == "2" and shown()["ready"] == "true")
        assert (shown()["rows"], shown()["columns"]) == (str(rows), str(columns))
        assert z_of() != last_layer_first_head

        # Hovering a target token colours the source tokens by its attention weights.
        target_chips = driver.find_elements(By.CSS_SELECTOR, "#row-tokens .token")
        assert [chip.text for chip in target_chips] == best["tokens"] + ["</s>"]
        ActionChains(driver).move_to_element(target_chips[0]).perform()
        wait.until(lambda d: "active" in target_chips[0].get_attribute("class"))
        source_chips = driver.find_elements(By.CSS_SELECTOR, "#column-tokens .token")
        assert len(source_chips) == columns
        assert all("232, 89, 12" in chip.value_of_css_property("background-color") for chip in source_chips)

        # The Hangul web font is loaded (no system font on these machines has Hangul) and everything came from
        # the demo's own server.
        assert driver.execute_script("return document.fonts.check('16px NanumGothic', '한')")
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(name.startswith(demo_url + "/") for name in resources), resources
        assert driver.find_elements(By.CSS_SELECTOR, "#training-curves-plot .main-svg")
        _save_screenshot(driver, tmp_path / "demo.png")

        Select(by_id("attention-kind")).select_by_value("encoder_self_attention")
        wait.until(lambda d: shown()["kind"] == "encoder_self_attention" and shown()["ready"] == "true")
        assert (shown()["rows"], shown()["columns"]) == (str(columns), str(columns))
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    if os.environ.get("KT_DEMO_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "demo.png", Path(os.environ["KT_DEMO_SCREENSHOT_DIR"]) / "demo.png")
