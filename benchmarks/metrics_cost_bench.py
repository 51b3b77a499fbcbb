#!/usr/bin/env python
"""The worker's metrics code alone: CPU per job of the calls a worker makes with
``--metrics-port`` on, against the same loop with metrics off, in one process.

What a worker process records per batched commit step (``memworker/worker/batch.py``,
``memworker/embedding/batcher.py``): one commit-seconds observation, the jobs, records,
time-to-searchable and attempts of the step's jobs (``committed_many``), one
inference-seconds and one batch-size observation; plus the health beat's ``flush`` once
a second (here once per ``--flush-every`` steps). With metrics off the worker asks
``worker_metrics()`` and gets ``None``. Jobs per step: ``--jobs`` (8, the default
``MEMWORKER_COMMIT_STEP``).

Compare the difference per job with the worker's whole CPU per job in
``queue_bench.py`` part D (113-300 us a single-text job on the 2-core test machine).

    python benchmarks/metrics_cost_bench.py            # 200,000 steps, 3 repeats
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def run(steps: int, jobs: int, flush_every: int, on: bool) -> float:
    """Seconds of CPU for ``steps`` commit steps' worth of metrics calls."""
    from memworker import metrics as m

    metrics = m.worker_metrics() if on else None
    stamps = [time.time() * 1000 - 5.0] * jobs
    started = time.process_time()
    for step in range(steps):
        current = m.worker_metrics() if on else None  # what the hot path asks each time
        if current is not None and metrics is not None:
            metrics.commit.labels("ns").observe(0.001)
            metrics.committed_many("ns", jobs, stamps, 1)
            metrics.inference.observe(0.002)
            metrics.batch_texts.observe(jobs)
            if step % flush_every == 0:
                metrics.flush()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=8, help="jobs per commit step")
    parser.add_argument("--flush-every", type=int, default=300, help="steps between flushes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        print(f"metrics_cost_bench: {args.steps:,} commit steps of {args.jobs} jobs, "
              f"a flush every {args.flush_every} steps, best of {args.repeats}")  # fmt: skip
        off = min(run(args.steps, args.jobs, args.flush_every, False) for _ in range(args.repeats))
        on = min(run(args.steps, args.jobs, args.flush_every, True) for _ in range(args.repeats))
        per_job_off = off / (args.steps * args.jobs) * 1e6
        per_job_on = on / (args.steps * args.jobs) * 1e6
        print(f"   metrics off: {per_job_off:.3f} us CPU per job")
        print(f"   metrics on:  {per_job_on:.3f} us CPU per job ({per_job_on / max(per_job_off, 1e-9):.0f}x)")
        extra = per_job_on - per_job_off
        for whole in (113, 150, 300):
            print(f"   the difference, {extra:.2f} us, is {100 * extra / whole:.2f}% of a job that costs "
                  f"{whole} us of worker CPU")  # fmt: skip


if __name__ == "__main__":
    main()
