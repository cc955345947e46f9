"""The demo's web application (aiohttp): the page, the files it loads and its JSON endpoints.

    GET  /                          the page (static/index.html)
    GET  /static/<file>             the page's JS and CSS
    GET  /vendor/plotly.min.js      plotly.js from the installed `plotly` package
    GET  /fonts/NanumGothic.ttf     the Hangul web font from `koreanize-matplotlib`
    GET  /api/info                  model facts (layers, heads, ...) and the default sentence
    POST /api/translate             {"text", "strategy", options...} -> hypotheses with scores and tokens
    POST /api/attention             {"source", "target"} -> every layer's and head's attention weights
    GET  /api/positional-encoding   the model's [max_length, d_model] table
    GET  /api/learning-rate         the run's warmup schedule and the rates history.json recorded
    GET  /api/training-curves       history.json per epoch

Errors under /api/ are JSON `{"error": "..."}`: 400 for bad input, 404/405/413 for wrong paths, methods and
oversized bodies, 500 (logged with its traceback) for anything else. The model runs in one worker thread, so
requests that need it are served one after another while the event loop keeps answering the rest.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from keras_transformer.demo import assets
from keras_transformer.demo.model_access import DemoModel
from keras_transformer.demo.validation import DemoInputError, parse_attention_request, parse_translate_request

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# Everything comes from this server. plotly.js sets inline styles and the favicon is a data: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)

MODEL = web.AppKey("model", DemoModel)
DEFAULT_SENTENCE = web.AppKey("default_sentence", str)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)

_dumps = functools.partial(json.dumps, ensure_ascii=False)


def create_app(model: DemoModel, default_sentence: str = "") -> web.Application:
    """The aiohttp application for a loaded `DemoModel`; `default_sentence` fills the source box."""
    plotly_js = assets.plotly_js_path()  # fail now, with the fix in the message, not on the first page load
    font = assets.korean_font_path()
    if font is None:
        logger.warning("koreanize-matplotlib is not installed: Hangul is drawn with the browser's own fonts.")

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json, _security_headers])
    app[MODEL] = model
    app[DEFAULT_SENTENCE] = default_sentence
    app[EXECUTOR] = ThreadPoolExecutor(1, thread_name_prefix="keras-transformer-demo")
    app.on_cleanup.append(_stop_executor)

    app.router.add_get("/", _file_handler(assets.STATIC_DIR / "index.html"))
    app.router.add_static("/static/", assets.STATIC_DIR)
    app.router.add_get("/vendor/plotly.min.js", _file_handler(plotly_js))
    if font is not None:
        app.router.add_get("/fonts/NanumGothic.ttf", _font)
    app.router.add_get("/api/info", _info)
    app.router.add_post("/api/translate", _translate)
    app.router.add_post("/api/attention", _attention)
    for path, method in (
        ("/api/positional-encoding", DemoModel.positional_encoding),
        ("/api/learning-rate", DemoModel.learning_rate),
        ("/api/training-curves", DemoModel.training_curves),
    ):
        app.router.add_get(path, _run_record_handler(method))
    return app


# ------------------------------------------------------------------------------------------------ handlers
def _file_handler(path):
    async def handler(request):
        return web.FileResponse(path)

    return handler


async def _font(request):
    # Prepared in the loop's default executor: it is not model work and must not wait behind a translation.
    body = await asyncio.get_running_loop().run_in_executor(None, assets.web_font)
    return web.Response(body=body, content_type="font/ttf", headers={"Cache-Control": "max-age=86400"})


async def _info(request):
    model = request.app[MODEL]
    return _json({**model.info(), "default_sentence": request.app[DEFAULT_SENTENCE]})


async def _translate(request):
    model = request.app[MODEL]
    text, strategy, options = parse_translate_request(await _json_body(request), model.info()["target_vocab_size"])
    started = time.perf_counter()
    result = await _in_model_thread(request.app, model.translate, text, strategy, options)
    seconds = round(time.perf_counter() - started, 3)
    return _json({"source": text, "strategy": strategy, "options": options, **result, "seconds": seconds})


async def _attention(request):
    source, target = parse_attention_request(await _json_body(request))
    result = await _in_model_thread(request.app, request.app[MODEL].attention, source, target)
    return _json({"source": source, "target": target, **result})


def _run_record_handler(method):
    """A GET endpoint answering `method(model)`: records of the run, computed on demand (they are small)."""

    async def handler(request):
        model = request.app[MODEL]
        return _json(await _in_model_thread(request.app, method, model))

    return handler


# ------------------------------------------------------------------------------------------------ plumbing
async def _in_model_thread(app, function, *args):
    """Runs a model call in the single worker thread: TensorFlow work stays off the event loop, and Keras'
    per-thread state (traced functions) stays in one thread."""
    return await asyncio.get_running_loop().run_in_executor(app[EXECUTOR], functools.partial(function, *args))


async def _json_body(request):
    try:
        return json.loads(await request.text())
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise DemoInputError(f"The request body must be JSON (UTF-8): {error}.") from None


def _json(value, status=200):
    return web.json_response(value, status=status, dumps=_dumps)


@web.middleware
async def _errors_as_json(request, handler):
    try:
        return await handler(request)
    except DemoInputError as error:
        return _json({"error": str(error)}, status=error.status)
    except web.HTTPException as error:
        if error.status < 400 or not request.path.startswith("/api/"):
            raise
        # aiohttp's own text for 413 says what the limit is; for 404/405 name what was asked for.
        generic = error.text is None or error.text.startswith(f"{error.status}:")
        message = f"{error.reason}: {request.method} {request.path}" if generic else error.text
        return _json({"error": message}, status=error.status)
    except ValueError as error:  # the model refused a value the checks let through
        return _json({"error": str(error)}, status=400)
    except Exception as error:  # noqa: BLE001 - answered as JSON, logged with the traceback
        logger.exception("demo request %s %s failed", request.method, request.path)
        return _json({"error": f"Internal error: {type(error).__name__}: {error}"}, status=500)


@web.middleware
async def _security_headers(request, handler):
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


async def _stop_executor(app):
    app[EXECUTOR].shutdown(wait=True)


# ------------------------------------------------------------------------------------------------- running
class DemoServer:
    """Serves an app from a background thread (tests, notebooks); `port=0` picks a free port.

    Example:
    >>> server = DemoServer(create_app(DemoModel.load("saved_models/ko-en-small"))).start()  # doctest: +SKIP
    >>> server.url  # doctest: +SKIP
    'http://127.0.0.1:40321'
    >>> server.shutdown()  # doctest: +SKIP
    """

    def __init__(self, app, host="127.0.0.1", port=0):
        self.app = app
        self.host = host
        self.port = int(port)
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, name="keras-transformer-demo-server", daemon=True)

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self, timeout=30):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout)
        return self

    async def _listen(self):
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def shutdown(self, timeout=30):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()


def run_demo(model: DemoModel, host="127.0.0.1", port=8080, default_sentence=""):
    """Serves the demo in this thread until Ctrl-C."""
    web.run_app(create_app(model, default_sentence), host=host, port=port)
