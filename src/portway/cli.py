"""The ``portway`` command line: ``run``, ``check``, ``token``, ``connect``, ``user``, ``ca`` and
``version``.

``worker`` is internal (``portway run`` starts it). ``token`` and ``connect`` are the two sides
of the gateway mode: making and reading tokens, and reaching a backend through a gateway.
Secrets and keys are read from files or environment variables, never from the command line,
where other users could see them in ``ps`` and the shell keeps them in its history.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from portway import __version__, logs
from portway.cacli import add_ca_parser, ca_command
from portway.config.default import default_config
from portway.config.keys import load_gateway_keys, weak_secret_warnings
from portway.config.load import load_file
from portway.config.model import Config, GatewaySpec
from portway.config.plan import render_plan
from portway.errors import ConfigError
from portway.gatewaycli import add_connect_parser, add_token_parser, connect_command, token_command
from portway.usercli import add_user_parser, user_command

DESCRIPTION = """\
Portway puts many private services behind one public address.

  portway run                      run the built-in default (admin endpoint + a demo tcp listener)
  portway run -c portway.toml      run your configuration
  portway check -c portway.toml    validate a configuration and print the effective plan
  portway token encrypt ...        make a gateway token (see: portway token --help)
  portway connect ...              reach a backend through a gateway from a local port
  portway user add FILE NAME       add a user to a forward proxy's users file (bcrypt)
  portway ca init                  make the CA for the forward proxy's TLS interception

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

    add_token_parser(sub)
    add_connect_parser(sub)
    add_user_parser(sub)
    add_ca_parser(sub)

    sub.add_parser("version", help="print the version")

    worker = sub.add_parser("worker")  # internal: started by `portway run`
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--count", type=int, required=True)
    worker.add_argument("--control-fd", type=int, required=True)
    return parser


def _load(path: str | None) -> Config:
    return load_file(path) if path else default_config()


def _has_keyring(spec: GatewaySpec) -> bool:
    return spec.keyring_file is not None or spec.keyring_env is not None


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
    if args.command == "token":
        return token_command(args)
    if args.command == "connect":
        return connect_command(args)
    if args.command == "user":
        return user_command(args)
    if args.command == "ca":
        return ca_command(args)
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
            "no -c given: running the built-in default: a forward proxy on 127.0.0.1:8080 (try: "
            "curl -x 127.0.0.1:8080 https://example.com/), the admin endpoint, and a demo tcp listener "
            "on 127.0.0.1:7070 that forwards to it (try: curl http://127.0.0.1:7070/stats). See README.md "
            "for the tcp, sni, tls, gateway and http-proxy modes and how to configure yours."
        )
    for listener in config.listeners:
        binds = ", ".join(str(b) for b in listener.bind)
        if listener.gateway is not None:
            versions = (
                "v1 and v2"
                if listener.gateway.accept_v1 and _has_keyring(listener.gateway)
                else ("v1" if listener.gateway.accept_v1 else "v2")
            )
            target = f"{versions} tokens, {len(listener.gateway.allow)} allow entries"
            for warning in weak_secret_warnings(load_gateway_keys(listener.gateway), listener.name):
                log.warning("%s", warning)
        elif listener.http_proxy is not None:
            proxy = listener.http_proxy
            auth = f"users from {proxy.users_file}" if proxy.users_file else "no authentication"
            target = "forward proxy (HTTP, CONNECT" + (", SOCKS5" if proxy.socks5 else "") + f"), {auth}"
        elif listener.backend:
            target = f"backend {listener.backend}"
        else:
            target = f"{len(listener.routes)} routes"
        log.info("listener %s (%s) on %s -> %s", listener.name, listener.mode, binds, target)
    return supervisor.main(config, args.config, pid_file=args.pid_file, workers=args.workers)
