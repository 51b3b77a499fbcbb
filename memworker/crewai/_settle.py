"""One thread per producer that learns when its jobs leave the pending set.

Many agent threads wait on their own jobs (``remember``) while others wait on
everything (``drain_writes``): rather than one drain per waiter, a single thread
subscribes once to the producer's ``done`` channel and resolves a future per job
(``None`` committed, or the :class:`~memworker.queue.jobs.FailedJob`; a job with
neither a commit marker nor a failure record is lost, as a drain reports it). Each failure
record is read and consumed (``HDEL``) by this thread only, so it is reported
exactly once. A bounded poll backs up the pub/sub wake-up, as in ``drain``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from memworker.forks import reset_in_forked_children
from memworker.io.redispy import redis_client
from memworker.queue.jobs import LOST_ERROR, FailedJob, QueueKeys, failure_from_json
from memworker.settings import Settings

__all__ = ["Settler"]

log = logging.getLogger("memworker.crewai")

#: Longest wait between two checks of the watched jobs (s).
POLL_S = 0.05
#: Wait after a Valkey error before trying again (s).
ERROR_PAUSE_S = 0.5


class Settler:
    """Futures for one producer's jobs, resolved when each job is committed or failed."""

    def __init__(self, settings: Settings, queue: Any) -> None:
        """``queue``: the MemoryQueue whose jobs are watched (its ``producer_id`` is read
        each time: a forked child's own), or a fixed producer id."""
        self.settings = settings
        self.keys = QueueKeys(settings.namespace)
        self._queue = queue
        self._after_fork()
        reset_in_forked_children(self)

    @property
    def producer(self) -> str:
        """The queue's producer id (a forked child's own, when the id was a default)."""
        if isinstance(self._queue, str):
            return self._queue
        return self._queue.producer_id  # type: ignore[no-any-return]

    def _after_fork(self) -> None:
        """Nothing watched, no thread (in a forked child: the parent's jobs are not its
        own to wait for, nor their failures its own to consume)."""
        self._lock = threading.Lock()
        self._waiting: dict[str, Future[Any]] = {}
        self._added = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str) -> Future[Any]:
        """A future resolved with ``None`` (committed) or the ``FailedJob``."""
        future: Future[Any] = Future()
        with self._lock:
            self._waiting[job_id] = future
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name=f"memworker-settle-{self.producer}", daemon=True
                )
                self._thread.start()
        self._added.set()
        return future

    def outstanding(self) -> dict[str, Future[Any]]:
        """Jobs watched and not yet resolved."""
        with self._lock:
            return dict(self._waiting)

    def close(self) -> None:
        """Stop the thread: at once when nothing is watched (waits up to 5 s for it to
        end), else once what is watched has settled (not waited for here)."""
        self._stop.set()
        self._added.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and not self.outstanding():
            thread.join(5)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        client = redis_client(self.settings)
        pubsub = None
        try:
            # Stopped (close()), the thread still settles what is watched: a job
            # enqueued while the memory closed must not leave its caller waiting.
            while not self._stop.is_set() or self.outstanding():
                try:
                    if pubsub is None:
                        pubsub = client.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(self.keys.producer(self.producer).done_channel)
                    self._check(client)
                    if not self.outstanding():
                        self._added.wait(1.0)
                        self._added.clear()
                        continue
                    message = pubsub.get_message(timeout=POLL_S)
                    while message is not None:  # a burst of wake-ups
                        message = pubsub.get_message(timeout=0)
                except Exception:  # noqa: BLE001 - keep settling; waiters have timeouts
                    log.warning("memworker settle loop: Valkey error", exc_info=True)
                    if pubsub is not None:
                        try:
                            pubsub.close()
                        except Exception:  # noqa: BLE001
                            pass
                        pubsub = None
                    self._stop.wait(ERROR_PAUSE_S)
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001
                    pass
            client.close()

    def _check(self, client: Any) -> None:
        ids = list(self.outstanding())
        if not ids:
            return
        scores = client.zmscore(self.keys.producer(self.producer).pending, ids)
        done = [i for i, s in zip(ids, scores) if s is None]
        if not done:
            return
        keys = self.keys.producer(self.producer)
        # One MULTI read, as a drain's: a commit and a failure each move a job out of
        # pending atomically with their marker, so each id is seen in one state.
        with client.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.failed, done)
            pipe.zmscore(keys.committed, done)
            pipe.zmscore(keys.reported, done)
            raws, markers, tombs = pipe.execute()
        found = [i for i, raw in zip(done, raws) if raw is not None]
        if found:  # consumed, and tombstoned as a drain does (reported once, not "lost")
            now = int(time.time() * 1000)
            with client.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.failed, *found)
                pipe.zadd(keys.reported, {i: now for i in found})
                pipe.execute()
        for job_id, raw, marker, tomb in zip(done, raws, markers, tombs):
            if raw is not None:
                result: FailedJob | None = failure_from_json(raw, job_id)
            elif marker is not None or tomb is not None:
                result = None  # committed (or reported by a drain, which took the marker)
            else:  # neither committed nor failed: the server lost it, as a drain says
                result = FailedJob(job_id=job_id, record_ids=[], error=LOST_ERROR)
            with self._lock:
                future = self._waiting.pop(job_id, None)
            if future is not None and not future.done():
                future.set_result(result)
