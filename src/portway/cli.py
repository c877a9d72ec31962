"""The ``portway`` command line: ``run``, ``check`` and ``version`` (``worker`` is internal)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from portway import __version__, logs
from portway.config.default import default_config
from portway.config.load import load_file
from portway.config.model import Config
from portway.config.plan import render_plan
from portway.errors import ConfigError

DESCRIPTION = """\
Portway puts many private services behind one public address.

  portway run                      run the built-in default (admin endpoint + a demo tcp listener)
  portway run -c portway.toml      run your configuration
  portway check -c portway.toml    validate a configuration and print the effective plan

Signals to the `portway run` process: SIGHUP reloads the file without dropping
connections, SIGTERM drains and exits, SIGINT (Ctrl-C) exits at once.
The configuration reference is in README.md.
"""

RUN_EPILOG = """\
examples:
  portway run                                   # built-in default; try: curl http://127.0.0.1:7070/stats
  portway run -c portway.toml --workers 1       # one worker process
  kill -HUP $(cat portway.pid)                  # reload (with pid_file = "portway.pid")
"""

CHECK_EPILOG = """\
exit status: 0 when the file is valid (the plan is printed), 1 when it is not
(every problem is printed as  FILE: KEY: what was expected, what was found).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portway", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"portway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the proxy (supervisor + workers)",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run Portway in the foreground: a supervisor process and N worker processes.",
    )
    run.add_argument(
        "-c", "--config", metavar="FILE", help="TOML configuration file (default: the built-in default)"
    )
    run.add_argument(
        "--workers", type=int, metavar="N", help="number of worker processes (overrides `workers`)"
    )
    run.add_argument(
        "--pid-file", metavar="PATH", help="write the supervisor's pid here (overrides `pid_file`)"
    )

    check = sub.add_parser(
        "check",
        help="validate a configuration file and print the effective plan",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate a configuration file completely without starting anything.",
    )
    check.add_argument(
        "-c", "--config", metavar="FILE", help="TOML configuration file (default: the built-in default)"
    )

    sub.add_parser("version", help="print the version")

    worker = sub.add_parser("worker")  # internal: started by `portway run`
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--count", type=int, required=True)
    worker.add_argument("--control-fd", type=int, required=True)
    return parser


def _load(path: str | None) -> Config:
    return load_file(path) if path else default_config()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``portway`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "version":
        print(f"portway {__version__}")
        return 0
    if args.command == "worker":
        from portway import worker

        return worker.main(args.index, args.count, args.control_fd)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        n = len(exc.issues)
        print(f"{n} problem{'s' * (n != 1)} found; nothing was started.", file=sys.stderr)
        return 1
    if args.command == "check":
        try:
            print(render_plan(config))
            print(f"\n{config.source}: configuration is valid.")
        except BrokenPipeError:  # `portway check | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return _run(config, args)


def _run(config: Config, args: argparse.Namespace) -> int:
    from portway import supervisor

    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    logs.setup(config.log.level, config.log.format, "supervisor")
    import logging

    log = logging.getLogger("portway")
    log.info("portway %s starting (pid %d) with %s", __version__, os.getpid(), config.source)
    if args.config is None:
        log.info(
            "no -c given: running the built-in default: the admin endpoint plus a demo tcp "
            "listener on 127.0.0.1:7070 that forwards to it (try: curl http://127.0.0.1:7070/stats). "
            "The tcp mode is the one available in this version; see README.md to configure yours."
        )
    for listener in config.listeners:
        binds = ", ".join(str(b) for b in listener.bind)
        target = f"backend {listener.backend}" if listener.backend else f"{len(listener.routes)} routes"
        log.info("listener %s (%s) on %s -> %s", listener.name, listener.mode, binds, target)
    return supervisor.main(config, args.config, pid_file=args.pid_file, workers=args.workers)
