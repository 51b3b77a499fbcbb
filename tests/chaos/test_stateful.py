"""Stateful property test (10): hypothesis interleaves enqueues, worker starts, SIGKILLs,
SIGTERMs, pauses and short drains against a real valkey-server and real `memworker
worker` processes, and checks the drain barrier after every drain:

- a drain that returns has every job enqueued before the call either committed (each of
  its records found by ``get_record`` and by a search scoped to that record alone) or
  reported failed/lost;
- a ``DrainTimeout`` names only jobs enqueued before the call, every one of them still
  pending then, and every such job still pending now;
- after every step: no job is partly written, no record outside the jobs enqueued, side
  indexes exact;
- at teardown (a worker started, everything drained): no job lost, no duplicate record
  (``store.count()`` equals the distinct record ids of the committed jobs), no job
  reported twice, side indexes exact.

Bounded: few examples, few steps, no shrinking, every wait has a deadline, every process
is killed at teardown. The outcome is one row of RELIABILITY.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from chaos_embedder import vector
from harness import HANG_SLACK_S, Workers, audit, record, wait_for
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from memworker.queue.jobs import DrainTimeout
from memworker.queue.producer import MemoryQueue
from memworker.store.store import ValkeyStore

PRODUCER = "sm"
FINAL_DRAIN_S = 45          # teardown drain: covers a SIGKILLed worker's redelivery (~6-7 s)
SIGTERM_EXIT_S = 20         # a worker that got SIGTERM must exit within this
WORKER_ARGS = ("--max-retries", "3", "--min-backoff-ms", "50",
               # Many SIGKILLs may hit one job: keep the poison guard out of the way, so any
               # failure at all is unexpected (and checked to have written nothing).
               "--max-deliveries", "100")

STATS = {k: 0 for k in ("examples", "steps", "jobs", "records", "drains", "drain_timeouts",
                        "sigkill", "sigterm", "worker_starts", "lost", "duplicates",
                        "early_returns", "hangs", "failed_jobs", "partial_jobs",
                        "double_reports", "slow_sigterm_exits", "jobs_committed",
                        "jobs_checked_at_mid_run_drains", "drain_timeouts_with_live_worker")}


class BarrierMachine(RuleBasedStateMachine):
    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.ns = f"st{uuid.uuid4().hex[:10]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="mw-stateful-"))
        self.workers = Workers(self.url, self.ns, self.workdir)
        self.proc: subprocess.Popen | None = None          # the worker not yet told to stop
        self.stopping: list[subprocess.Popen] = []          # SIGTERMed, maybe still finishing
        self.termed_before_start: set[int] = set()          # pids SIGTERMed before "started"
        self.q = MemoryQueue(self.url, namespace=self.ns, producer_id=PRODUCER)
        self.store = ValkeyStore(self.url, namespace=self.ns, search_mode="exact")
        self.client = self.store_client()
        self.jobs: dict[str, list[tuple[str, str]]] = {}   # job -> [(record id, text)]
        self.unresolved: set[str] = set()                   # neither verified committed nor reported
        self.committed: set[str] = set()
        self.failed: set[str] = set()
        self.reported: set[str] = set()                     # named in some DrainReport.failed
        self.n = 0

    def store_client(self):
        import redis

        host, port = self.url.split("//", 1)[1].split(":")
        return redis.Redis(host=host, port=int(port), socket_timeout=10)

    # ------------------------------------------------------------------ helpers
    def alive(self) -> list[subprocess.Popen]:
        procs = [p for p in [self.proc, *self.stopping] if p is not None]
        return [p for p in procs if p.poll() is None]

    def worker_started(self, proc: subprocess.Popen) -> bool:
        log = self.workdir / f"worker-{self.workers.procs.index(proc)}.log"
        return f"worker {proc.pid} started" in log.read_text(errors="replace")

    def present(self, job: str) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for rid, _ in self.jobs[job]:
            pipe.exists(f"{{{self.ns}}}:rec:{rid}")
        return [bool(x) for x in pipe.execute()]

    def searchable(self, job: str) -> bool:
        """Every record found by id and by a search scoped to that record alone."""
        for rid, text in self.jobs[job]:
            rec = self.store.get_record(rid)
            if rec is None or rec.content != text:
                return False
            hits = self.store.search(vector(text).tolist(), scope_prefix=f"/r/{rid}", limit=3)
            if [r.id for r, _ in hits] != [rid]:
                return False
        return True

    def settle(self, before: set[str], report) -> None:
        """The barrier: every job of ``before`` committed and searchable, or reported."""
        failed = {f.job_id: f for f in report.failed}
        STATS["lost"] += len(report.lost)
        assert not report.lost, f"jobs reported lost with no server crash: {report.lost}"
        twice = set(failed) & self.reported
        STATS["double_reports"] += len(twice)
        assert not twice, f"jobs reported failed twice: {twice}"
        assert set(failed) <= before, f"failed jobs not awaited: {set(failed) - before}"
        assert report.committed <= len(before), (report.committed, len(before))
        early = []
        for job in sorted(before):
            if job in failed:
                STATS["failed_jobs"] += 1
                assert not any(self.present(job)), f"failed job {job} left records: {failed[job]}"
                self.failed.add(job)
                self.reported.add(job)
                self.unresolved.discard(job)
            elif self.searchable(job):
                STATS["jobs_committed"] += 1
                self.committed.add(job)
                self.unresolved.discard(job)
            else:
                early.append(job)
        STATS["early_returns"] += len(early)
        assert not early, (f"drain returned with {len(early)} job(s) neither committed nor "
                           f"reported: {early}; pending now: {self.q.pending()}")

    # ------------------------------------------------------------------ rules
    @initialize(jobs=st.integers(1, 3), worker=st.sampled_from(["live", "live", "starting", "none"]))
    def some_jobs_first(self, jobs: int, worker: str) -> None:
        """Work and (usually) a worker for every example: hypothesis' swarm testing may
        disable ``enqueue`` or ``start_worker`` for a whole example."""
        for k in range(jobs):
            self.enqueue(size=1 + k, slow=[0, 150, 0, 400, 0])
        if worker != "none":
            self.start_worker(wait_live=worker == "live")

    @rule(size=st.integers(1, 5), slow=st.lists(st.sampled_from([0, 0, 150, 400, 900]),
                                               min_size=5, max_size=5))
    def enqueue(self, size: int, slow: list[int]) -> None:
        self.n += 1
        items = []
        for k in range(size):
            rid = f"r{self.n}x{k}"
            text = f"job {self.n} item {k} of {self.ns}" + (f" SLOW{slow[k]}" if slow[k] else "")
            items.append({"id": rid, "text": text, "scope": f"/r/{rid}", "categories": [f"c{k % 2}"]})
        job, ids = self.q.enqueue_encode_job(items)
        assert ids == [i["id"] for i in items]
        self.jobs[job] = [(i["id"], i["text"]) for i in items]
        self.unresolved.add(job)
        STATS["jobs"] += 1
        STATS["records"] += size

    @precondition(lambda self: not self.alive())
    @rule(wait_live=st.booleans())
    def start_worker(self, wait_live: bool) -> None:
        self.proc = self.workers.start(threads=2, args=WORKER_ARGS)
        STATS["worker_starts"] += 1
        if wait_live:  # else the next steps race its start-up
            wait_for(lambda: self.proc.poll() is not None or self.worker_started(self.proc), 30,
                     "the worker to start")

    @precondition(lambda self: bool(self.alive()))
    @rule()
    def sigkill_worker(self) -> None:
        for p in self.alive():  # also one finishing after a SIGTERM
            self.workers.kill(p, signal.SIGKILL)
            STATS["sigkill"] += 1
        self.proc, self.stopping = None, []  # a SIGKILLed one has no exit status to check

    @precondition(lambda self: self.proc is not None and self.proc.poll() is None)
    @rule()
    def sigterm_worker(self) -> None:
        # Before its handlers are installed (no job fetched yet) SIGTERM just ends it.
        if not self.worker_started(self.proc):
            self.termed_before_start.add(self.proc.pid)
        self.workers.kill(self.proc, signal.SIGTERM)  # no wait: it finishes in the background
        self.stopping.append(self.proc)
        self.proc = None
        STATS["sigterm"] += 1

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.5, 3.0]))
    def pass_time(self, seconds: float) -> None:
        time.sleep(seconds)

    @rule(timeout=st.sampled_from([0.3, 1.0, 3.0, 8.0]))
    def drain(self, timeout: float) -> None:
        before = set(self.unresolved)
        STATS["drains"] += 1
        live = self.proc is not None and self.proc.poll() is None and self.worker_started(self.proc)
        if not self.alive():
            timeout = min(timeout, 0.5)  # it can only time out (or find nothing to wait for)
        started = time.monotonic()
        try:
            report = self.q.drain(timeout=timeout)
        except DrainTimeout as e:
            took = time.monotonic() - started
            STATS["drain_timeouts"] += 1
            STATS["drain_timeouts_with_live_worker"] += int(live)
            STATS["hangs"] += int(took > timeout + HANG_SLACK_S)
            assert took <= timeout + HANG_SLACK_S, f"drain(timeout={timeout}) took {took:.1f} s"
            named = set(e.job_ids)
            pending_now = set(self.q.pending())
            assert named, "DrainTimeout naming no job"
            assert named <= before, f"DrainTimeout names jobs not awaited: {named - before}"
            assert pending_now & before <= named, f"pending jobs not named: {(pending_now & before) - named}"
            failures = {k.decode() for k in self.client.hkeys(f"{{{self.ns}}}:failed:{PRODUCER}")}
            for job in named - pending_now:  # finished between the timeout and our look
                assert all(self.present(job)) or job in failures, f"named job {job} vanished"
            return
        took = time.monotonic() - started
        STATS["hangs"] += int(took > timeout + HANG_SLACK_S)
        assert took <= timeout + HANG_SLACK_S, f"drain(timeout={timeout}) returned after {took:.1f} s"
        STATS["jobs_checked_at_mid_run_drains"] += len(before)
        self.settle(before, report)

    # ------------------------------------------------------------------ every step
    @invariant()
    def store_consistent(self) -> None:
        STATS["steps"] += 1
        partial = [j for j in self.jobs if len(set(self.present(j))) > 1]
        STATS["partial_jobs"] += len(partial)
        assert not partial, f"jobs partly written: {partial}"
        a = audit(self.client, self.ns)
        known = {rid for recs in self.jobs.values() for rid, _ in recs}
        assert a.ids <= known, f"records of no job: {a.ids - known}"
        assert a.bad_records == [] and a.categories_ok and a.tree_root == a.records
        for job in self.committed:  # a commit never goes away
            assert all(self.present(job)), f"committed job {job} lost records"

    # ------------------------------------------------------------------ final
    def teardown(self) -> None:
        try:
            self.final_check()
        finally:
            self.workers.close()
            self.q.close()
            self.store.close()
            self.client.close()

    def final_check(self) -> None:
        deadline = time.monotonic() + SIGTERM_EXIT_S
        for p in self.stopping:
            while p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if p.poll() is None:
                STATS["slow_sigterm_exits"] += 1
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
                raise AssertionError(f"worker {p.pid} did not exit within {SIGTERM_EXIT_S} s of SIGTERM")
            ok = (0, -signal.SIGTERM) if p.pid in self.termed_before_start else (0,)
            assert p.returncode in ok, f"worker {p.pid} exited {p.returncode} after SIGTERM"
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self.workers.start(threads=2, args=WORKER_ARGS)
            STATS["worker_starts"] += 1
        before = set(self.unresolved)
        started = time.monotonic()
        try:
            report = self.q.drain(timeout=FINAL_DRAIN_S)
        except DrainTimeout as e:
            STATS["hangs"] += 1
            raise AssertionError(f"final drain with a live worker timed out: {e}\n{self.workers.logs()}")
        STATS["hangs"] += int(time.monotonic() - started > FINAL_DRAIN_S + HANG_SLACK_S)
        self.settle(before, report)
        lost = set(self.unresolved)
        STATS["lost"] += len(lost)
        assert not lost and not self.q.pending(), f"jobs never resolved: {lost}"
        # Asked again by id: nothing new is failed or lost, and no job is reported twice.
        again = self.q.drain(timeout=10, job_ids=sorted(self.jobs))
        STATS["lost"] += len(again.lost)
        STATS["double_reports"] += len(again.failed)
        assert again.lost == [] and again.failed == [], again
        assert again.committed <= len(self.committed)
        expected = {rid for j in self.committed for rid, _ in self.jobs[j]}
        a = audit(self.client, self.ns)
        count = self.store.count()
        STATS["duplicates"] += max(0, count - len(expected))
        assert a.ids == expected, (expected - a.ids, a.ids - expected)
        assert count == a.records == len(expected) == a.tree_root
        assert a.bad_records == [] and a.categories_ok
        cats = self.store.list_categories()
        want: dict[str, int] = {}
        for rid in expected:
            c = f"c{int(rid.split('x')[1]) % 2}"
            want[c] = want.get(c, 0) + 1
        assert cats == want, (cats, want)


def test_barrier_holds_under_random_interleavings(chaos_server):
    BarrierMachine.url = chaos_server.url
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            BarrierMachine,
            settings=settings(max_examples=8, stateful_step_count=12, deadline=None,
                              phases=[Phase.explicit, Phase.generate], database=None,
                              suppress_health_check=list(HealthCheck), print_blob=True),
        )
    finally:
        record("Stateful interleavings (hypothesis: enqueue, start, SIGKILL, SIGTERM, drain)",
               injections=STATS["sigkill"] + STATS["sigterm"], lost=STATS["lost"],
               duplicates=STATS["duplicates"], early_returns=STATS["early_returns"],
               hangs=STATS["hangs"],
               **{k: v for k, v in STATS.items()
                  if k not in ("lost", "duplicates", "early_returns", "hangs")},
               seconds=round(time.monotonic() - started, 1))
