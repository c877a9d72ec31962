#!/usr/bin/env python3
"""Portway benchmark harness: Portway against HAProxy and nginx (and sniproxy) on loopback, and
Portway's forward proxy against squid, tinyproxy, proxy.py, pproxy and mitmdump.

Each proxy runs with one worker pinned to the proxy core; load generators and backends run on the
load core. Scenarios (see ``scenarios.py``): ``bulk`` (iperf3), ``short`` (wrk, one connection per
request) and ``idle`` (RSS per held connection) run by default; on request, wrk over HTTPS with new
TLS connections or keep-alive requests, through SNI passthrough (``sni-new``, ``sni-keepalive``) or
with TLS terminated by the proxy (``tls-new``, ``tls-keepalive``); and Portway's gateway listener
against its own tcp listener (``gw-connect``, ``gw-bulk``); Portway's ``mode = "http-proxy"`` against
forward proxies (``fwd-new``, ``fwd-connect``, ``fwd-keepalive``). Each scenario × proxy runs ``--runs``
times with the proxies interleaved per round, so that ratios can be paired round by round.
A Markdown report goes to stdout, the full data to ``bench/results/<timestamp>.json``, progress to
stderr.

    python bench/run.py --quick                                   # smoke check
    python bench/run.py --proxies haproxy,haproxy-splice,nginx    # peers only, 3 runs
    python bench/run.py --scenarios sni-new,sni-keepalive         # SNI passthrough, sniproxy included
    python bench/run.py --scenarios tls-new,tls-keepalive         # TLS termination: portway, haproxy, nginx
    python bench/run.py --scenarios gw-connect,gw-bulk            # portway-gateway against portway (tcp)
    python bench/run.py --scenarios fwd-new,fwd-connect           # forward proxies: portway vs squid...
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from proctree import StartError, free_port, stop_all
from proxies import MODES, PROXY_CLASSES, REPO, Context, Proxy, make_proxies
from report import Runs, markdown, summarize
from scenarios import (
    Bulk,
    FwdConnect,
    FwdKeepalive,
    FwdNew,
    GwBulk,
    GwConnect,
    Idle,
    Measured,
    Scenario,
    Settings,
    Short,
    SniKeepalive,
    SniNew,
    TlsKeepalive,
    TlsNew,
)

HERE = Path(__file__).resolve().parent
SCENARIOS: dict[str, type[Scenario]] = {
    "bulk": Bulk,
    "short": Short,
    "idle": Idle,
    "sni-new": SniNew,
    "sni-keepalive": SniKeepalive,
    "tls-new": TlsNew,
    "tls-keepalive": TlsKeepalive,
    "gw-connect": GwConnect,
    "gw-bulk": GwBulk,
    "fwd-new": FwdNew,
    "fwd-connect": FwdConnect,
    "fwd-keepalive": FwdKeepalive,
}
#: What runs without --scenarios (the sni, tls, gateway and forward scenarios are asked for by name).
DEFAULT_SCENARIOS = ["bulk", "short", "idle"]
ALL_PROXIES = [cls.name for cls in PROXY_CLASSES]
#: The modes ("tcp", "sni", "tls", "gateway", "forward") each proxy supports, to pick the default --proxies.
PROXY_MODES = {cls.name: cls.modes for cls in PROXY_CLASSES}

#: Tools needed per scenario and per proxy (portway is checked separately and skipped if absent).
TOOLS_FOR: dict[str, list[str]] = {
    "bulk": ["iperf3"],
    "short": ["wrk", "nginx"],
    "idle": [],
    "sni-new": ["wrk", "nginx", "openssl"],
    "sni-keepalive": ["wrk", "nginx", "openssl"],
    "tls-new": ["wrk", "nginx", "openssl"],
    "tls-keepalive": ["wrk", "nginx", "openssl"],
    "gw-connect": ["nginx"],
    "gw-bulk": [],
    "fwd-new": ["ab", "nginx"],
    "fwd-connect": ["nginx"],
    "fwd-keepalive": ["ab", "nginx"],
    "haproxy": ["haproxy"],
    "haproxy-splice": ["haproxy"],
    "nginx": ["nginx"],
    "sniproxy": ["sniproxy"],
}


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def csv(kinds: list[str]) -> Any:
    """An argparse type: a comma-separated subset of ``kinds``."""

    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in kinds]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(kinds)} (got {text!r})")
        return items

    return parse


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 2000,10000")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    scenario_list = "\n".join(f"  {name:<14} {cls.kind:<7}  {cls.title}" for name, cls in SCENARIOS.items())
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark Portway against HAProxy and nginx on loopback (one worker each, pinned).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""scenarios (name, the proxies' mode, title):
{scenario_list}

sni-*: the proxies pass TLS through, routed by SNI (localhost), to an nginx HTTPS origin.
tls-*: the proxies terminate TLS (one self-signed P-256 certificate for localhost, no SNI
routing) and forward plain HTTP to an nginx HTTP origin. sniproxy has no tls mode; portway-copy
and haproxy-splice have none either (nothing to splice once TLS is terminated in the proxy).
gw-*: portway-gateway (a mode = "gateway" listener; every client sends a v2 token line and reads
"200" first) against portway (its tcp listener, no handshake), with the Python peers of
bench/gwload.py on the load core; the other proxies have no gateway mode. gw-connect: new
connections (--wrk-connections concurrent) each doing one HTTP request to an nginx origin;
gw-bulk: one transfer of --gw-bulk-mib each way.
fwd-*: forward proxies (portway mode = "http-proxy", squid, tinyproxy, proxy.py, pproxy,
mitmdump; the Python ones from bench/.peers-venv, skipped with a note when missing) in front of
an nginx origin, the only destination they allow. fwd-new: ab -X (absolute-form HTTP/1.0, a
new client connection per request); fwd-keepalive: ab -k -X (keep-alive clients; a proxy that
closes anyway makes ab reconnect);
fwd-connect: bench/proxyload.py, --wrk-connections concurrent CONNECT tunnels, each carrying
one HTTP GET. Ratios against squid and tinyproxy.""",
    )
    p.add_argument(
        "--scenarios",
        type=csv(list(SCENARIOS)),
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of: {','.join(SCENARIOS)} (default: %(default)s; the sni, "
        "tls, gw and fwd ones run only when named)",
    )
    p.add_argument(
        "--proxies",
        type=csv(ALL_PROXIES),
        default=None,
        help=f"comma-separated subset of: {','.join(ALL_PROXIES)} (default: every proxy that has the "
        "mode of one of the scenarios: sniproxy only with an sni scenario, portway-copy and "
        "haproxy-splice not with tls scenarios alone, portway-gateway only with a gw scenario, the "
        "forward proxies only with a fwd scenario; "
        "portway is skipped with a note if it cannot run)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="rounds per scenario, proxies interleaved per round (default: 3)",
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per iperf3 / wrk run (default: 5)")
    p.add_argument(
        "--idle",
        type=int_list,
        default=None,
        metavar="N,N",
        help="idle connection counts, clamped to what RLIMIT_NOFILE allows (default: 2000,10000)",
    )
    p.add_argument(
        "--wrk-connections",
        type=int,
        default=50,
        help="wrk -c, and the concurrency of gw-connect and fwd-connect (default: 50)",
    )
    p.add_argument(
        "--gw-bulk-mib",
        type=int,
        default=None,
        help="MiB sent each way by each gw-bulk transfer (default: 2048)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 1 run, 2 s, idle N=500, gw-bulk 256 MiB (explicit options still win)",
    )
    p.add_argument("--proxy-core", type=int, default=0, help="CPU for the proxy under test (default: 0)")
    p.add_argument(
        "--load-core",
        type=int,
        default=1,
        help="CPU for load generators, backends and the harness (default: 1)",
    )
    p.add_argument(
        "--portway-cmd",
        default=None,
        help="command that runs Portway (default: .venv/bin/portway, else python -m portway)",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=HERE / "results",
        help="where the JSON goes (default: bench/results)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs of the children")
    args = p.parse_args(argv)
    defaults = (1, 2.0, [500], 256) if args.quick else (3, 5.0, [2000, 10000], 2048)
    for name, value in zip(("runs", "duration", "idle", "gw_bulk_mib"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.runs < 1 or args.duration <= 0 or args.gw_bulk_mib < 1 or args.wrk_connections < 1:
        p.error("--runs, --wrk-connections and --gw-bulk-mib must be >= 1 and --duration > 0")
    return args


def portway_command(text: str | None) -> list[str]:
    """How to run Portway: ``--portway-cmd``, else the venv's script, else ``python -m portway``."""
    if text:
        return shlex.split(text)
    script = REPO / ".venv" / "bin" / "portway"
    if script.exists():
        return [str(script)]
    venv_python = REPO / ".venv" / "bin" / "python"
    return [str(venv_python if venv_python.exists() else sys.executable), "-m", "portway"]


def missing_tools(scenarios: list[str], proxies: list[str]) -> list[str]:
    """Executables needed for this selection that are not on PATH."""
    needed = {"taskset"}
    for name in [*scenarios, *proxies]:
        needed.update(TOOLS_FOR.get(name, []))
    return sorted(t for t in needed if shutil.which(t) is None)


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(proxy: Proxy, scenarios: list[str]) -> str:
    """How ``proxy`` is configured in the selected scenarios: one description per mode that ran,
    prefixed with the mode when there are several (tcp's never is)."""
    ran = {SCENARIOS[name].kind for name in scenarios}
    kinds = [kind for kind in MODES if kind in ran and kind in proxy.modes]
    if len(kinds) == 1:
        return proxy.mode_description(kinds[0])
    parts = [
        proxy.mode_description(kind) if kind == "tcp" else f"{kind} scenarios: {proxy.mode_description(kind)}"
        for kind in kinds
    ]
    return "; ".join(parts) or proxy.description


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C: unwind, stop every child, exit 130."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_scenario(
    scen: Scenario, proxies: list[Proxy], runs: int, notes: list[str], failures: list[str], broken: set[str]
) -> Runs:
    """Run ``runs`` rounds of ``scen``; in each round, each case starts, measures and stops every proxy.

    A round's values of all cases are merged into one :class:`Measured` per proxy. Failures become
    notes; a proxy that fails to start is skipped (``broken``) for the rest of the run.
    """
    results: Runs = {p.name: [] for p in proxies}
    for proxy in proxies:
        if scen.kind not in proxy.modes:
            notes.append(f"{proxy.name} does not run the {scen.name} scenario (it has no {scen.kind} mode)")
    proxies_here = [p for p in proxies if scen.kind in p.modes]
    scen.setup()
    try:
        mode = scen.proxy_mode()
        for rnd in range(1, runs + 1):
            merged = {p.name: Measured() for p in proxies}
            for case in scen.cases():
                for proxy in proxies_here:
                    if proxy.name in broken:
                        continue
                    port = free_port()
                    log(f"{scen.name} round {rnd}/{runs} {case}: {proxy.name} on :{port}")
                    failure = None
                    try:
                        proxy.start(port, scen.upstream_port, tag=f"{scen.name}-{rnd}-{case}", mode=mode)
                        measured = scen.measure(proxy, port, case)
                    except StartError as exc:
                        failure = f"{proxy.name}: failed to start, skipped from here on: {exc}"
                        broken.add(proxy.name)
                    except RuntimeError as exc:
                        failure = f"{proxy.name} {scen.name} {case} round {rnd}: {exc}"
                    finally:
                        proxy.stop()
                    if failure:
                        log(f"  {failure}")
                        failures.append(failure)
                        notes.append(failure)
                        continue
                    notes.extend(measured.notes)
                    merged[proxy.name].values.update(measured.values)
                    log("  " + ", ".join(f"{k}={v:.3g}" for k, v in measured.values.items()))
            for proxy in proxies:
                results[proxy.name].append(merged[proxy.name] if merged[proxy.name].values else None)
    finally:
        scen.teardown()
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.proxies is None:
        kinds = {SCENARIOS[name].kind for name in args.scenarios}
        args.proxies = [name for name, cls in PROXY_MODES.items() if kinds & set(cls)]

    missing = missing_tools(args.scenarios, [p for p in args.proxies if not p.startswith("portway")])
    if missing:
        print(
            f"error: missing tools: {', '.join(missing)}. Install them with: sudo bench/setup.sh",
            file=sys.stderr,
        )
        return 2
    cpus = os.sched_getaffinity(0)
    if args.proxy_core == args.load_core or not {args.proxy_core, args.load_core} <= cpus:
        print(
            f"error: need two distinct usable CPUs for --proxy-core/--load-core (have {sorted(cpus)})",
            file=sys.stderr,
        )
        return 2

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)
    os.sched_setaffinity(0, {args.load_core})  # the harness opens the idle clients: it is load
    fd_limit = raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="portway-bench-"))
    ctx = Context(
        workdir=workdir,
        proxy_core=args.proxy_core,
        fd_limit=fd_limit,
        portway_cmd=portway_command(args.portway_cmd),
    )
    notes: list[str] = []
    failures: list[str] = []

    cap = (ctx.max_proxied // 100) * 100
    idle_counts = []
    for n in args.idle:
        if n > cap:
            if "idle" in args.scenarios:  # the note only matters when the idle scenario runs
                notes.append(
                    f"idle N={n:,} clamped to {cap:,}: the RLIMIT_NOFILE hard limit is {fd_limit} and a "
                    "proxy needs 2 fds per proxied connection plus spare ones"
                )
            n = cap
        if n not in idle_counts:
            idle_counts.append(n)

    known = make_proxies(ctx)
    proxies: list[Proxy] = []
    for name in args.proxies:
        reason = known[name].unavailable()
        if reason:
            notes.append(f"skipped {name}: {reason}")
            log(f"skipping {name}: {reason}")
        else:
            proxies.append(known[name])
    if not proxies:
        print("error: no runnable proxy selected", file=sys.stderr)
        for note in notes:
            print(f"  {note}", file=sys.stderr)
        return 2

    settings = Settings(
        workdir=workdir,
        load_core=args.load_core,
        duration=args.duration,
        idle_counts=idle_counts,
        wrk_connections=args.wrk_connections,
        gw_bulk_bytes=args.gw_bulk_mib << 20,
    )
    scenarios = [SCENARIOS[name](settings) for name in args.scenarios]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: dict[str, Runs] = {}
    broken: set[str] = set()
    try:
        for scen in scenarios:
            results[scen.name] = run_scenario(scen, proxies, args.runs, notes, failures, broken)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except StartError as exc:  # a backend (origin, holder) did not start
        failures.append(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
        if args.keep_workdir or failures:
            log(f"child configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    doc: dict[str, Any] = {
        "meta": {
            "date": started,
            "command": shlex.join(["python", "bench/run.py", *argv]),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "proxy_core": args.proxy_core,
            "load_core": args.load_core,
            "runs": args.runs,
            "duration": args.duration,
            "idle_counts": idle_counts,
            "wrk_connections": args.wrk_connections,
            "gw_bulk_mib": args.gw_bulk_mib,
            "fd_limit": fd_limit,
            "proxies": [p.name for p in proxies],
            "versions": {p.name: p.version() for p in proxies},
            "descriptions": {p.name: describe(p, args.scenarios) for p in proxies},
        },
        "notes": notes,
        "scenarios": summarize(scenarios, results, [p.name for p in proxies]),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{stamp}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    log(f"JSON written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
