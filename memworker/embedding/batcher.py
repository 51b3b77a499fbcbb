"""The per-process embedding batcher: one inference pool for a worker's threads.

:class:`EmbeddingBatcher`: worker threads submit texts and wait on futures; its
inference threads coalesce the texts of every in-flight request into batches, dedupe
them and call the model once per batch. Its thread starts on the first submit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from memworker.embedding.model import check_texts
from memworker.embedding.protocols import TextEncoder
from memworker.errors import ConfigError, MemworkerError, shown
from memworker.metrics import worker_metrics

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("memworker.embedding.model")

__all__ = ["BatcherStats", "EmbeddingBatcher", "THREAD_NAME"]

#: Name of the batcher's inference threads (``memworker-embed-0``, ``-1``...).
THREAD_NAME = "memworker-embed"
#: Fewest texts a batch starts with while another batch is in the model, unless the
#: oldest has waited SIDE_BATCH_WAIT (s): tiny batches cost more CPU a text
#: (figures: benchmarks/README.md).
SIDE_BATCH_MIN = 8
SIDE_BATCH_WAIT = 0.05


@dataclass(frozen=True)
class BatcherStats:
    """Counters of an :class:`EmbeddingBatcher` since it was created.

    Attributes:
        requests: Requests submitted (non-empty ones).
        batches: Model calls made.
        texts: Texts taken into batches (before dedupe).
        deduped: Texts not sent to the model because an identical text was in the batch.
        failed_batches: Batches whose model call raised.
        isolated_retries: Model calls re-running one request's part of a failed
            batch on its own (to fail only the request whose texts fail).
    """

    requests: int = 0
    batches: int = 0
    texts: int = 0
    deduped: int = 0
    failed_batches: int = 0
    isolated_retries: int = 0


class _Request:
    """One submit: its texts, its future and the rows filled in so far."""

    __slots__ = ("done", "future", "missing", "rows", "started", "texts")

    def __init__(self, texts: tuple[str, ...], future: Future[np.ndarray]) -> None:
        self.texts = texts
        self.future = future
        self.rows: np.ndarray | None = None
        self.missing = len(texts)
        self.started = False  # the future was marked running (it can no longer be cancelled)
        self.done = False


#: A slice ``texts[start:stop]`` of a request waiting in the queue, with its arrival time.
_Segment = tuple[_Request, int, int, float]


class EmbeddingBatcher:
    """Coalesces the texts of concurrent requests into batches for one model.

    Use one per worker process. Worker threads call :meth:`submit` (or :meth:`encode`);
    ``threads`` inference threads, started on the first submit, each take up to
    ``batch_size`` texts, or what has arrived ``max_wait_ms`` after the oldest waiting
    text, whichever comes first, and run their batches side by side (the model must then
    be safe to call from several threads, as torch and ONNX Runtime models are). Each
    sends every distinct text of its batch to the model once, in one call, and
    resolves every future whose texts are all done. A request larger than
    ``batch_size`` spans several batches. If the model raises on a batch of several
    requests, each request's part of the batch is re-run on its own
    (``isolated_retries``), so exactly the requests whose own texts make the model
    raise fail, with their own exception (their remaining texts are dropped); a
    good request that shared a batch with a poison text still succeeds.

    Args:
        embedder: The model: an :class:`Embedder` or any object with ``encode`` and
            ``dimension``.
        batch_size: Most texts in one model call.
        max_wait_ms: How long to wait for more texts after the first one arrives.
        threads: Inference threads (batches in the model at once).
        on_start: Called in each inference thread when it starts, before its first
            batch (the worker lowers that thread's CPU priority there: threads the
            model creates inherit it).
    """

    def __init__(
        self,
        embedder: TextEncoder,
        *,
        batch_size: int = 64,
        max_wait_ms: float = 5,
        threads: int = 1,
        on_start: Callable[[], None] | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {shown(batch_size)}")
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {shown(threads)}")
        if not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {shown(max_wait_ms)}")
        self._embedder = embedder
        self._on_start = on_start
        self._batch_size = batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._cond = threading.Condition()
        self._queue: deque[_Segment] = deque()
        self._queued = 0  # texts in the queue
        self._thread_count = threads
        self._running = 0  # batches in the model
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._counts = dict.fromkeys(vars(BatcherStats()), 0)

    @property
    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        with self._cond:
            return BatcherStats(**self._counts)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Queue texts for embedding.

        Args:
            texts: The texts of one request.

        Returns:
            A future of a float32 array with one row per text, in order. It fails with
            the model's exception if the model raises on this request's own texts.

        Raises:
            ValidationError: ``texts`` is not a list of str.
            MemworkerError: The batcher is closed.
        """
        return self.submit_many([texts])[0]

    def submit_many(self, requests: Sequence[Sequence[str]]) -> list[Future[np.ndarray]]:
        """:meth:`submit` for several requests at once, in order: one lock and one
        wake-up of the inference threads for all (a worker's fetch of many
        single-text jobs would otherwise wake them once a job).

        Raises:
            ValidationError: A request is not a list of str (nothing is queued).
            MemworkerError: The batcher is closed.
        """
        checked = [tuple(check_texts(texts)) for texts in requests]
        futures: list[Future[np.ndarray]] = [Future() for _ in checked]
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise MemworkerError("EmbeddingBatcher is closed; create a new one")
            queued = 0
            for items, future in zip(checked, futures):
                if not items:
                    future.set_result(np.empty((0, self._embedder.dimension), dtype=np.float32))
                    continue
                self._queue.append((_Request(items, future), 0, len(items), now))
                self._queued += len(items)
                self._counts["requests"] += 1
                queued += 1
            if queued:
                if not self._threads:
                    self._threads = [
                        threading.Thread(target=self._run, name=f"{THREAD_NAME}-{i}", daemon=True)
                        for i in range(self._thread_count)
                    ]
                    for thread in self._threads:
                        thread.start()
                self._cond.notify_all()  # every inference thread re-checks its wait
        return futures

    def encode(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """Submit texts and wait for their vectors.

        Args:
            texts: The texts.
            timeout: Seconds to wait; ``None`` waits for ever.

        Returns:
            A float32 array with one row per text, in order.

        Raises:
            TimeoutError: The vectors were not ready in time.
        """
        return self.submit(texts).result(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting texts, embed those already queued, then stop the threads.

        Args:
            timeout: Seconds to wait for the threads; ``None`` waits until they are done.

        Returns:
            ``True`` if the threads have stopped (or never started).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the inference thread

    def _run(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:  # noqa: BLE001 - a priority not lowered is no reason to stop
                log.warning("embedding thread: on_start failed", exc_info=True)
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return  # closed and drained
                self._running += 1
            try:
                self._process(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the thread
                # (its requests' futures would never resolve: their jobs, and every job
                # queued behind them in a commit lane, would wait for ever)
                log.exception("embedding thread: a batch failed unexpectedly")
                for req, *_ in batch:
                    self._fail(req, exc)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()  # a thread holding back may now start

    def _next_batch(self) -> list[_Segment] | None:
        """Wait for and take the next batch (under the lock); ``None`` once closed and
        drained. A batch starts with ``batch_size`` texts queued, or ``max_wait_ms``
        after the oldest one arrived. While another thread's batch is in the model,
        a smaller one waits longer (:data:`SIDE_BATCH_WAIT`) until it holds
        :data:`SIDE_BATCH_MIN` texts: a few texts beside a running batch cost more
        CPU each than the same texts added to the next batch."""
        while True:
            if not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
                continue
            if not self._closed and self._queued < self._batch_size:
                wait = self._max_wait
                if self._running and self._queued < min(SIDE_BATCH_MIN, self._batch_size):
                    wait = max(wait, SIDE_BATCH_WAIT)
                left = self._queue[0][3] + wait - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
            batch = self._take()
            if batch:
                return batch

    def _take(self) -> list[_Segment]:
        """Pop up to ``batch_size`` texts of live requests (called under the lock)."""
        batch: list[_Segment] = []
        room = self._batch_size
        while self._queue and room:
            request, start, stop, arrived = self._queue.popleft()
            self._queued -= stop - start
            if request.done:
                continue  # failed in an earlier batch
            if not request.started:
                if not request.future.set_running_or_notify_cancel():
                    request.done = True  # cancelled before any work
                    continue
                request.started = True
            if stop - start > room:
                self._queue.appendleft((request, start + room, stop, arrived))
                self._queued += stop - start - room
                stop = start + room
            batch.append((request, start, stop, arrived))
            room -= stop - start
        return batch

    def _process(self, batch: list[_Segment]) -> None:
        """Embed one batch and resolve the requests it completes. If the model raises,
        re-run each request's part of the batch on its own, so only the requests whose
        own texts fail are failed (with their own error)."""
        index: dict[str, int] = {}  # distinct text -> row in the model's output
        positions = [
            np.fromiter(
                (index.setdefault(t, len(index)) for t in req.texts[start:stop]),
                dtype=np.intp,
                count=stop - start,
            )
            for req, start, stop, _ in batch
        ]
        taken = sum(len(p) for p in positions)
        with self._cond:
            self._counts["batches"] += 1
            self._counts["texts"] += taken
            self._counts["deduped"] += taken - len(index)
        try:
            vectors = self._encode(list(index))
        except Exception as exc:  # noqa: BLE001 - isolate the request(s) that fail
            with self._cond:
                self._counts["failed_batches"] += 1
            live = [segment for segment in batch if not segment[0].done]
            if len(live) == 1:
                self._fail(live[0][0], exc)  # alone already: nothing to isolate
                return
            for segment in live:
                self._isolated(segment)
            return
        for segment, rows in zip(batch, positions):
            self._fill(segment, vectors, rows)

    def _encode(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = np.asarray(self._embedder.encode(texts), dtype=np.float32)
        metrics = worker_metrics()
        if metrics is not None:  # every model call: whole batches and isolated re-runs
            metrics.inference.observe(time.perf_counter() - started)
            metrics.batch_texts.observe(len(texts))
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise MemworkerError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    def _isolated(self, segment: _Segment) -> None:
        """Re-run one request's part of a failed batch alone; fail only that request."""
        req, start, stop, _ = segment
        index: dict[str, int] = {}
        rows = np.fromiter(
            (index.setdefault(t, len(index)) for t in req.texts[start:stop]),
            dtype=np.intp,
            count=stop - start,
        )
        with self._cond:
            self._counts["isolated_retries"] += 1
        try:
            vectors = self._encode(list(index))
        except Exception as exc:  # noqa: BLE001 - this request's own texts fail
            self._fail(req, exc)
            return
        self._fill(segment, vectors, rows)

    def _fill(self, segment: _Segment, vectors: np.ndarray, rows: np.ndarray) -> None:
        req, start, stop, _ = segment
        with self._cond:  # a request's parts may be in batches of different threads
            if req.done:
                return
            if req.rows is None:
                req.rows = np.empty((len(req.texts), vectors.shape[1]), dtype=np.float32)
            if req.rows.shape[1] == vectors.shape[1]:
                req.rows[start:stop] = vectors[rows]
                req.missing -= stop - start
                if req.missing:
                    return
                req.done = True
                error = None
            else:  # the embedder answered this request's batches in two dimensions
                req.done = True  # its remaining texts are dropped when taken
                error = MemworkerError(
                    f"embedder returned {vectors.shape[1]}-dimension vectors for texts of a "
                    f"request whose other texts got {req.rows.shape[1]}"
                )
        if error is None:
            req.future.set_result(req.rows)
        else:
            req.future.set_exception(error)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        with self._cond:
            if req.done:
                return
            req.done = True  # its remaining texts are dropped when taken
        req.future.set_exception(exc)
