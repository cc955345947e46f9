"""`MicroBatcher`: one bounded queue of instances and one worker thread that runs them in batches.

As TF Serving's batching (`batching/`): concurrent requests' instances are run together, in arrival order, up to
`max_batch_size` per call, waiting at most `batch_timeout_ms` (counted from the batch's oldest instance) for a
batch to fill. Requests wait on a `concurrent.futures.Future`, so threads (gRPC) and asyncio (REST, through
`asyncio.wrap_future`) use the same queue.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time

from keras_transformer.serving.errors import ServingError

logger = logging.getLogger(__name__)


class _Task:
    """One request's instances for one batch key, possibly split over several batches."""

    __slots__ = ("key", "values", "n", "taken", "delivered", "results", "future", "cancelled", "queued_at")

    def __init__(self, key, values):
        self.key = key
        self.values = values
        self.n = len(values)
        self.taken = 0  # instances already put into a batch
        self.delivered = 0  # instances whose outputs are in `results`
        self.results = None  # {output name: [value per instance]}
        self.future = concurrent.futures.Future()
        self.cancelled = False
        self.queued_at = time.monotonic()

    @property
    def failed(self) -> bool:
        return self.future.done() and self.future.exception() is not None


class MicroBatcher:
    """Runs `run_batch(key, values) -> {output name: array with len(values) rows}` in batches of one key.

    A key says what can share a batch (the server uses `(loaded model, signature name)`, so a batch never
    mixes model versions). `run_batch` is only called from the worker thread. `submit` raises a 503
    `ServingError` (gRPC RESOURCE_EXHAUSTED) when the queue would hold more than `max_queue` instances. When a
    batch fails, its requests are re-run one by one, so one bad request does not fail the others.
    `on_batch(size, seconds)` is called after each successful batch (metrics)."""

    def __init__(self, run_batch, max_batch_size=32, batch_timeout_ms=5.0, max_queue=256, on_batch=None):
        if max_batch_size < 1 or max_queue < 1 or not batch_timeout_ms >= 0:
            raise ValueError("max_batch_size and max_queue must be positive and batch_timeout_ms non-negative.")
        self._run = run_batch
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout = float(batch_timeout_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._queue = collections.deque()
        self._queued = 0  # instances waiting, not yet in a batch
        self._cond = threading.Condition()
        self._closed = False
        self._paused = False
        self._sizes = collections.Counter()
        self._counts = dict(requests=0, instances=0, batches=0, rejected=0, failed_requests=0, failed_batches=0)
        self._model_seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name="keras-transformer-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side
    def submit(self, key, values) -> _Task:
        if not values:
            raise ServingError(400, "no instances to run.")
        with self._cond:
            if self._closed:
                raise ServingError(503, "the server is shutting down.", grpc_code="UNAVAILABLE")
            if self._queued + len(values) > self.max_queue:
                self._counts["rejected"] += 1
                raise ServingError(
                    503,
                    f"the batching queue is full ({self._queued} instances waiting, {len(values)} more would exceed "
                    f"max_queue={self.max_queue}); retry later.",
                )
            task = _Task(key, values)
            self._queue.append(task)
            self._queued += task.n
            self._counts["requests"] += 1
            self._cond.notify_all()
        return task

    def wait(self, task, timeout=None) -> dict:
        """The task's outputs `{name: list}`; raises its ServingError, or 504 after `timeout` seconds."""
        try:
            return task.future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.cancel(task)
            if task.future.done():  # answered in between
                return task.future.result()
            raise ServingError(504, f"the request was not answered within {timeout:g} s.") from None

    def run(self, key, values, timeout=None) -> dict:
        return self.wait(self.submit(key, values), timeout)

    def cancel(self, task):
        """Takes an abandoned task's unstarted instances off the queue."""
        with self._cond:
            task.cancelled = True
            if task in self._queue:
                self._queue.remove(task)
                self._queued -= task.n - task.taken

    def pause(self):
        """Stop starting batches (requests still queue up, and get 503 once the queue is full)."""
        with self._cond:
            self._paused = True

    def resume(self):
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return self._queued

    def stats(self) -> dict:
        with self._cond:
            stats = dict(self._counts)
            stats.update(
                queued=self._queued,
                max_batch_size=self.max_batch_size,
                largest_batch=max(self._sizes, default=0),
                mean_batch_size=stats["instances"] / stats["batches"] if stats["batches"] else 0.0,
                batch_sizes=dict(sorted(self._sizes.items())),
                model_seconds=self._model_seconds,
            )
        return stats

    def close(self, timeout=10.0):
        """Stops the worker after the batch it is running; requests still queued get 503."""
        with self._cond:
            self._closed = True
            for task in self._queue:
                self._finish(task, ServingError(503, "the server is shutting down.", grpc_code="UNAVAILABLE"))
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _available(self, key) -> int:
        count = 0
        for task in self._queue:
            if task.key == key:
                count += task.n - task.taken
                if count >= self.max_batch_size:
                    break
        return count

    def _take(self, key) -> list:
        """Removes up to max_batch_size queued instances of `key`: [(task, start, stop)]."""
        segments, space, keep = [], self.max_batch_size, collections.deque()
        for task in self._queue:
            if space and task.key == key:
                count = min(space, task.n - task.taken)
                segments.append((task, task.taken, task.taken + count))
                task.taken += count
                space -= count
                self._queued -= count
            if task.taken < task.n:
                keep.append(task)
        self._queue = keep
        return segments

    def _loop(self):
        while True:
            with self._cond:
                while not self._closed and (self._paused or not self._queue):
                    self._cond.wait()
                if self._closed:
                    return
                key = self._queue[0].key
                deadline = self._queue[0].queued_at + self.batch_timeout
                while not self._closed and self._queue and self._available(key) < self.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return
                segments = self._take(key)
            if segments:
                try:
                    self._execute(key, segments)
                except Exception as error:  # noqa: BLE001 - never let the worker die
                    logger.exception("batch failed")
                    for task, _, _ in segments:
                        self._fail(task, ServingError(500, f"internal error: {type(error).__name__}"))

    def _execute(self, key, segments):
        values = [value for task, start, stop in segments for value in task.values[start:stop]]
        begin = time.perf_counter()
        try:
            outputs = self._run(key, values)
        except Exception as error:  # noqa: BLE001 - sorted out below
            if len(segments) > 1:  # find the request(s) at fault: re-run each alone
                with self._cond:
                    self._counts["failed_batches"] += 1
                for segment in segments:
                    if not segment[0].failed:
                        self._execute(key, [segment])
                return
            if isinstance(error, ServingError):
                failure = error
            else:
                logger.error("model run failed: %s: %s", type(error).__name__, error)
                failure = ServingError(500, f"internal error while running the model: {type(error).__name__}")
            self._fail(segments[0][0], failure)
            return
        elapsed = time.perf_counter() - begin
        with self._cond:
            self._counts["batches"] += 1
            self._counts["instances"] += len(values)
            self._sizes[len(values)] += 1
            self._model_seconds += elapsed
            offset = 0
            for task, start, stop in segments:
                count = stop - start
                if not task.failed and not task.cancelled:
                    if task.results is None:
                        task.results = {name: [None] * task.n for name in outputs}
                    for name, array in outputs.items():
                        task.results[name][start:stop] = list(array[offset : offset + count])
                    task.delivered += count
                    if task.delivered == task.n:
                        task.future.set_result(task.results)
                offset += count
        self._on_batch(len(values), elapsed)

    def _fail(self, task, error):
        with self._cond:
            self._counts["failed_requests"] += 1
            if task in self._queue:  # its other instances need not run
                self._queue.remove(task)
                self._queued -= task.n - task.taken
            self._finish(task, error)

    @staticmethod
    def _finish(task, error):
        if not task.future.done():
            task.future.set_exception(error)


__all__ = ["MicroBatcher"]
