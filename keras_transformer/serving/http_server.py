"""The HTTP transport: aiohttp's server (llhttp parser, asyncio) in front of `RestApi`.

aiohttp, because it is maintained, parses HTTP/1.1 strictly (llhttp: a Content-Length that is not plain digits,
two Content-Length headers, or Content-Length with Transfer-Encoding are refused), and serves each connection as
a coroutine rather than a thread, so idle and slow clients cost memory, not threads. What it does not do, this
module adds:

- Every answer is JSON, also for requests its parser refuses (`handle_error`), and a request that carries no
  Content-Length and is not chunked but has a method that takes a body gets 411.
- Deadlines: the headers (and the idle time of a keep-alive connection) within `header_timeout_s`, aiohttp's
  keep-alive timer, which runs from the connection's start or its last answer and is not reset by trickled
  bytes; a client that sent part of a request by then gets 408. The body within `body_timeout_s`.
- Bodies larger than `max_body_bytes` get 413 before any byte of them is parsed (from Content-Length, or while
  reading a chunked body).
- At most `max_connections` open connections: one more gets 503 and is closed.
- `stop(grace)`: stop listening, answer the requests already received, then close.

The subclasses use a few private attributes of aiohttp's `RequestHandler` (`_messages`, `_waiter`,
`_request_count`, `_next_keepalive_close_time`); setup.cfg pins the aiohttp version they were written for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time

from aiohttp import HttpVersion11, web, web_protocol, web_server
from aiohttp.http_exceptions import BadHttpMethod

from keras_transformer.serving.errors import ServingError
from keras_transformer.serving.rest_api import JSON, Reply, encode_json, error_reply

logger = logging.getLogger(__name__)

BODY_METHODS = ("POST", "PUT", "PATCH")
# llhttp refuses methods it does not know; a request line that is otherwise well formed gets 501 (a method this
# server does not implement), anything else 400. The parser's message quotes the line as b'...'.
_WELL_FORMED_REQUEST_LINE = re.compile(r"b'[A-Z]{1,20} /\S* HTTP/1\.[01]'")
READ_CHUNK = 64 * 1024


def _raw_response(status, reason, message) -> bytes:
    """A complete `Connection: close` JSON response, for the moments aiohttp has no response object."""
    body = encode_json({"error": message})
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


class _ConnectionHandler(web_protocol.RequestHandler):
    """One connection: aiohttp's handler with JSON parse errors, a header deadline answer and a connection cap."""

    def __init__(self, manager, *, max_connections, metrics, **kwargs):
        super().__init__(manager, **kwargs)
        self._max_connections = max_connections
        self._metrics = metrics
        self._partial_request = False  # bytes of a request arrived, its headers are not complete yet

    def connection_made(self, transport):
        super().connection_made(transport)
        if len(self._manager.connections) > self._max_connections:
            self._metrics.observe_request("rest", "unknown", 503, 0.0)
            transport.write(_raw_response(503, "Service Unavailable",
                                          f"too many open connections (max_connections={self._max_connections}); "
                                          "retry later."))
            self.force_close()

    def data_received(self, data):
        idle = self._request_count == 0 or (self._waiter is not None and not self._waiter.done())
        count = self._request_count
        super().data_received(data)
        if idle:
            self._partial_request = self._request_count == count

    def _process_keepalive(self):
        expired = self._loop.time() >= self._next_keepalive_close_time
        waiting = self._waiter is not None and not self._waiter.done()
        if expired and waiting and self._partial_request and not self._force_close and self.transport is not None:
            self._metrics.observe_request("rest", "unknown", 408, 0.0)
            self.transport.write(_raw_response(408, "Request Timeout",
                                               f"the request headers did not arrive within "
                                               f"{self._keepalive_timeout:g} s."))
        super()._process_keepalive()

    def handle_error(self, request, status=500, exc=None, message=None):
        if isinstance(exc, BadHttpMethod) and _WELL_FORMED_REQUEST_LINE.search(str(message)):
            status, text = 501, "method not implemented: use GET or POST."
        elif status == 500:
            logger.error("error answering a request: %s: %s", type(exc).__name__, exc)
            text = "internal server error."
        else:
            text = f"bad HTTP request: {message or exc}"[:500]
        self._metrics.observe_request("rest", "unknown", status, 0.0)
        # aiohttp's stand-in request for an unparsable one says HTTP/1.0; answer in the version we speak.
        request._version = HttpVersion11
        request._cache.pop("version", None)
        response = web.Response(status=status, body=encode_json({"error": text}), headers={"Content-Type": JSON})
        response.force_close()
        return response


class _Server(web_server.Server):
    """aiohttp's low-level server, building `_ConnectionHandler`s."""

    def __init__(self, handler, *, max_connections, metrics, **kwargs):
        super().__init__(handler, **kwargs)
        self._extra = dict(max_connections=max_connections, metrics=metrics)

    def __call__(self):
        return _ConnectionHandler(self, loop=self._loop, **self._extra, **self._kwargs)


class HttpServer:
    """Serves `api` (a `RestApi`) on host:port from its own event-loop thread.

    Args:
        api: answers requests.
        options: `ServingOptions` (host, port, max_body_bytes, header/body timeouts, max_connections,
            access_log).
        metrics: `ServingMetrics`.
    """

    def __init__(self, api, options, metrics):
        self.api = api
        self.options = options
        self.metrics = metrics
        self.host, self.port = options.host, None
        self._loop = asyncio.new_event_loop()
        self._runner = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="keras-transformer-http", daemon=True)

    def start(self):
        """Binds and starts serving; raises OSError when the address cannot be bound."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            raise
        return self

    async def _start(self):
        options = self.options
        server = _Server(
            self._handle,
            max_connections=options.max_connections,
            metrics=self.metrics,
            keepalive_timeout=options.header_timeout_s,
            lingering_time=1.0,
            access_log=logging.getLogger("keras_transformer.serving.access") if options.access_log else None,
            access_log_format='%a "%r" %s %b %Tf',
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=options.shutdown_grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, options.host, options.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.host, self.port = self._runner.addresses[0][:2]

    def stop(self, grace=None):
        """Stops listening, lets the requests in progress finish (up to `grace` s), closes everything."""
        if self._runner is None or not self._thread.is_alive():
            return
        grace = self.options.shutdown_grace_s if grace is None else grace
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            future.result(grace + 10)
        except (concurrent.futures.TimeoutError, Exception) as error:  # noqa: BLE001 - stop anyway
            logger.warning("HTTP shutdown: %s", type(error).__name__)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._runner = None

    @property
    def thread(self):
        return self._thread

    # ------------------------------------------------------------------ one request
    async def _handle(self, request):
        begin = time.perf_counter()
        try:
            body = await self._read_body(request)
            reply = await self.api.handle(request.method, request.raw_path, body)
            close = False
        except ServingError as error:  # framing: the rest of the connection cannot be trusted
            reply, close = error_reply(error), True
        except Exception:  # noqa: BLE001 - a bug answers 500 JSON, logged once
            logger.exception("unexpected error answering %s %r", request.method, request.raw_path[:200])
            reply, close = Reply(500, encode_json({"error": "internal server error."})), True
        headers = dict(reply.headers, **{"Content-Type": reply.content_type})
        response = web.Response(status=reply.status, body=reply.body, headers=headers)
        if close:
            response.force_close()
        self.metrics.observe_request("rest", reply.endpoint, reply.status, time.perf_counter() - begin)
        return response

    async def _read_body(self, request) -> bytes:
        """The whole body, within max_body_bytes and body_timeout_s; ServingError (411, 413, 408, 400) else."""
        limit = self.options.max_body_bytes
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        length = request.content_length
        if length is None and not chunked:
            if request.method in BODY_METHODS:
                raise ServingError(411, f"a {request.method} request needs a Content-Length header (or a chunked "
                                        "body).")
            return b""
        if length is not None and length > limit:
            if length <= 4 * limit:  # read it, so that the client is not reset before it reads the 413
                await self._within_deadline(self._drain(request))
            raise ServingError(413, f"request body of {length} bytes > max_body_bytes={limit}.")
        return await self._within_deadline(self._read_limited(request, limit))

    async def _within_deadline(self, reading):
        try:
            return await asyncio.wait_for(reading, self.options.body_timeout_s)
        except asyncio.TimeoutError:
            raise ServingError(408, f"the request body did not arrive within {self.options.body_timeout_s:g} s.",
                               ) from None
        except ServingError:
            raise
        except Exception as error:  # noqa: BLE001 - the client broke the body's framing or hung up
            raise ServingError(400, f"incomplete or malformed request body ({type(error).__name__}).") from None

    @staticmethod
    async def _read_limited(request, limit) -> bytes:
        chunks, size = [], 0
        while chunk := await request.content.read(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ServingError(413, f"request body larger than max_body_bytes={limit}.")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    async def _drain(request):
        while await request.content.read(READ_CHUNK):
            pass


__all__ = ["HttpServer"]
