"""Benchmark scenarios: bulk transfer (iperf3), short connections (wrk), idle connections (RSS).

A scenario starts its backend once on the load core (``setup``). It has one or more cases (e.g. the
iperf3 variants, or the idle connection counts); each case is measured on a freshly started proxy
(``measure``) and returns values for some of the scenario's metrics. CPU is the proxy tree's
utime + stime sampled right before and right after the load; RSS is the tree's VmRSS.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctree import Child, StartError, cpu_seconds, free_port, rss_kib, wait_listening
from proxies import Proxy, nginx_common

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Metric:
    """One reported number; ``better`` is "higher", "lower", or empty for context-only numbers."""

    key: str
    label: str
    unit: str
    better: str
    digits: int = 2
    ratio: bool = True


@dataclass
class Measured:
    """What one measurement of one proxy produced: values by metric key, and notes (errors, warnings)."""

    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Settings:
    """Knobs shared by the scenarios."""

    workdir: Path
    load_core: int
    duration: float
    idle_counts: list[int]
    wrk_connections: int = 50


class Scenario(ABC):
    """A load shape run against each proxy."""

    name: str = ""
    title: str = ""
    #: "tcp": the proxies forward plain TCP; "sni": they route TLS by server name (see proxies.py).
    kind = "tcp"
    #: The server name the proxies route in sni scenarios (None for tcp ones).
    sni_name: str | None = None
    #: The proxies every other proxy is compared against, run by run.
    references: tuple[str, ...] = ("haproxy-splice", "nginx")

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.upstream_port = free_port()
        self.backend: Child | None = None

    @abstractmethod
    def metrics(self) -> list[Metric]:
        """The metrics this scenario reports, in table order."""

    @abstractmethod
    def setup(self) -> None:
        """Start the backend on the load core."""

    def cases(self) -> list[str]:
        """The cases of this scenario; each runs against a freshly started proxy."""
        return [self.name]

    @abstractmethod
    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        """Run the load of ``case`` through ``proxy`` listening on ``port``."""

    def teardown(self) -> None:
        """Stop the backend."""
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def load_cmd(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a load generator to completion on the load core (bounded by ``timeout``)."""
        return subprocess.run(
            ["taskset", "-c", str(self.s.load_core), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


# ------------------------------------------------------------------------------------ bulk


#: (metric key prefix, iperf3 -P, -R)
BULK_VARIANTS: list[tuple[str, int, bool]] = [
    ("p1", 1, False),
    ("p8", 8, False),
    ("p1r", 1, True),
    ("p8r", 8, True),
]


class Bulk(Scenario):
    """iperf3 through the proxy: ``-P 1`` and ``-P 8``, client→server and ``-R`` (server→client)."""

    name = "bulk"
    title = "Bulk transfer (iperf3 through the proxy)"

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        for key, streams, reverse in BULK_VARIANTS:
            flags = f"-P {streams}" + (" -R" if reverse else "")
            out.append(Metric(f"{key}_gbps", f"iperf3 {flags}: throughput", "Gbit/s", "higher"))
            out.append(Metric(f"{key}_cpu_s_per_gb", f"iperf3 {flags}: proxy CPU", "s/GB", "lower"))
            out.append(Metric(f"{key}_busy", f"iperf3 {flags}: proxy core busy", "%", "", 0, ratio=False))
        return out

    def setup(self) -> None:
        self.backend = Child(
            "iperf3-server",
            ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.upstream_port)],
            core=self.s.load_core,
            log=self.s.workdir / "iperf3-server.log",
        )
        wait_listening(self.upstream_port, self.backend)

    def cases(self) -> list[str]:
        return [key for key, _, _ in BULK_VARIANTS]

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        _, streams, reverse = next(v for v in BULK_VARIANTS if v[0] == case)
        argv = [
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            f"{self.s.duration:g}",
            "-P",
            str(streams),
            "--json",
        ]
        if reverse:
            argv.append("-R")
        data, cpu, wall = self._iperf(argv, proxy)
        received = data["end"]["sum_received"]
        result = Measured()
        result.values[f"{case}_gbps"] = received["bits_per_second"] / 1e9
        if received["bytes"] > 0:
            result.values[f"{case}_cpu_s_per_gb"] = cpu / (received["bytes"] / 1e9)
        result.values[f"{case}_busy"] = 100 * cpu / wall
        return result

    def _iperf(self, argv: list[str], proxy: Proxy) -> tuple[dict[str, Any], float, float]:
        """Run one iperf3 client; return its JSON, the proxy's CPU seconds and the wall seconds.

        Retries briefly if the iperf3 server is still busy with the previous test.
        """
        for attempt in range(5):
            pids = proxy.pids()
            t0, cpu0 = time.monotonic(), cpu_seconds(pids)
            try:
                out = self.load_cmd(argv, timeout=self.s.duration + 30)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError("iperf3 timed out") from exc
            cpu1, t1 = cpu_seconds(pids), time.monotonic()
            try:
                data = json.loads(out.stdout)
            except json.JSONDecodeError as exc:
                raise RuntimeError(f"iperf3 output not JSON: {(out.stderr or out.stdout)[:300]}") from exc
            error = data.get("error")
            if error and "busy" in error and attempt < 4:
                time.sleep(0.2 * (attempt + 1))
                continue
            if error:
                raise RuntimeError(f"iperf3: {error}")
            return data, cpu1 - cpu0, t1 - t0
        raise RuntimeError("iperf3 server stayed busy")


# ------------------------------------------------------------------------------------ short


WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(\w+)")
WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class Short(Scenario):
    """wrk with ``Connection: close`` through the proxy to an nginx origin: one connection per request."""

    name = "short"
    title = "Short connections (wrk -H 'Connection: close', one request per connection)"

    def metrics(self) -> list[Metric]:
        return [
            Metric("conns_per_s", "connections/s", "conn/s", "higher", 0),
            Metric("cpu_ms_per_1k", "proxy CPU per 1,000 connections", "ms", "lower", 1),
            Metric("busy", "proxy core busy", "%", "", 0, ratio=False),
            Metric(
                "socket_errors",
                "wrk socket errors (connect+read+write+timeout)",
                "count",
                "lower",
                0,
                ratio=False,
            ),
            Metric("non_2xx", "wrk non-2xx/3xx responses", "count", "lower", 0, ratio=False),
        ]

    def setup(self) -> None:
        rundir = self.s.workdir / "origin"
        rundir.mkdir(parents=True, exist_ok=True)
        conf = rundir / "nginx.conf"
        temps = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = "\n".join(f"    {name}_temp_path {rundir}/{name};" for name in temps)
        conf.write_text(
            nginx_common(rundir, 4096, 8192)
            + f"""http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{self.upstream_port} backlog=4096;
        location / {{
            return 200 "ok\\n";
        }}
    }}
}}
"""
        )
        self.backend = Child(
            "nginx-origin",
            ["nginx", "-p", f"{rundir}/", "-e", str(rundir / "error.log"), "-c", str(conf)],
            core=self.s.load_core,
            log=rundir / "output.log",
        )
        wait_listening(self.upstream_port, self.backend)

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        argv = [
            "wrk",
            "-t1",
            f"-c{self.s.wrk_connections}",
            f"-d{self.s.duration:g}s",
            "--timeout",
            "5s",
            "-H",
            "Connection: close",
            f"http://127.0.0.1:{port}/",
        ]
        pids = proxy.pids()
        t0, cpu0 = time.monotonic(), cpu_seconds(pids)
        try:
            out = self.load_cmd(argv, timeout=self.s.duration + 30)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("wrk timed out") from exc
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        match = WRK_REQUESTS.search(out.stdout)
        if out.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed (exit {out.returncode}): {(out.stderr or out.stdout)[:300]}")
        requests = int(match.group(1))
        unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}.get(match.group(3), 1.0)
        seconds = float(match.group(2)) * unit
        errors = WRK_ERRORS.search(out.stdout)
        socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
        non2xx = WRK_NON2XX.search(out.stdout)
        result = Measured()
        result.values["conns_per_s"] = requests / seconds
        if requests:
            result.values["cpu_ms_per_1k"] = (cpu1 - cpu0) * 1000 / (requests / 1000)
        result.values["busy"] = 100 * (cpu1 - cpu0) / (t1 - t0)
        result.values["socket_errors"] = socket_errors
        result.values["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
        if socket_errors:
            result.notes.append(f"{proxy.name} short: wrk {errors.group(0) if errors else ''}")
        return result


# ------------------------------------------------------------------------------------ idle


class Holder:
    """Handle on ``holder.py``: a backend that accepts and holds connections and reports its count."""

    def __init__(self, port: int, core: int, log: Path) -> None:
        self.child = Child(
            "holder",
            [sys.executable, str(HERE / "holder.py"), str(port)],
            core=core,
            log=log,
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        self._sel = selectors.DefaultSelector()
        assert self.child.proc.stdout is not None
        self._sel.register(self.child.proc.stdout, selectors.EVENT_READ)
        if self._readline(timeout=20) != "ready":
            raise StartError(self.child.describe_exit())

    def _readline(self, timeout: float) -> str:
        assert self.child.proc.stdout is not None
        if not self._sel.select(timeout):
            raise RuntimeError("holder did not answer")
        return self.child.proc.stdout.readline().strip()

    def count(self) -> int:
        """Connections the holder has open right now."""
        assert self.child.proc.stdin is not None
        self.child.proc.stdin.write("count\n")
        self.child.proc.stdin.flush()
        return int(self._readline(timeout=10))

    def wait_count(self, target: int, *, at_least: bool, timeout: float) -> int:
        """Poll until count >= target (``at_least``) or == target; return the last count seen."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.count()
            if (n >= target) if at_least else (n == target):
                return n
            if time.monotonic() > deadline:
                return n
            time.sleep(0.01)

    def stop(self) -> None:
        """Close its stdin (it exits) and stop it."""
        self._sel.close()
        self.child.stop()


class Idle(Scenario):
    """N idle connections through the proxy to a holder backend: proxy RSS per connection."""

    name = "idle"
    title = "Idle connections (proxy tree RSS)"

    #: Connections opened before waiting for the holder to catch up (stays well under listen backlogs).
    BATCH = 200

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.holder: Holder | None = None

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        for n in self.s.idle_counts:
            out.append(Metric(f"n{n}_kib_per_conn", f"N={n:,}: RSS per idle connection", "KiB", "lower", 2))
            out.append(
                Metric(f"n{n}_base_mib", f"N={n:,}: tree RSS before opening", "MiB", "lower", 1, ratio=False)
            )
        return out

    def setup(self) -> None:
        self.holder = Holder(self.upstream_port, self.s.load_core, self.s.workdir / "holder.log")

    def teardown(self) -> None:
        if self.holder is not None:
            self.holder.stop()
            self.holder = None

    def cases(self) -> list[str]:
        return [f"n{n}" for n in self.s.idle_counts]

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        n = int(case[1:])
        base, after = self._one(proxy, port, n)
        result = Measured()
        result.values[f"{case}_kib_per_conn"] = (after - base) / n
        result.values[f"{case}_base_mib"] = base / 1024
        return result

    def _one(self, proxy: Proxy, port: int, n: int) -> tuple[int, int]:
        """Open ``n`` connections, check they all reached the holder; return tree RSS before and after."""
        assert self.holder is not None
        left = self.holder.wait_count(0, at_least=False, timeout=30)
        if left:
            raise RuntimeError(f"holder still has {left} connections from before")
        base = rss_kib(proxy.pids())
        socks: list[socket.socket] = []
        try:
            while len(socks) < n:
                for _ in range(min(self.BATCH, n - len(socks))):
                    try:
                        socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                    except OSError as exc:
                        raise RuntimeError(f"connect #{len(socks) + 1} failed: {exc}") from exc
                seen = self.holder.wait_count(len(socks), at_least=True, timeout=30)
                if seen < len(socks):
                    raise RuntimeError(f"only {seen} of {len(socks)} connections reached the backend")
            after = rss_kib(proxy.pids())
        finally:
            for s in socks:
                s.close()
        left = self.holder.wait_count(0, at_least=False, timeout=60)
        if left:
            raise RuntimeError(f"{left} backend connections still open 60 s after the clients closed")
        return base, after


# ------------------------------------------------------------------------------------ sni


#: wrk --latency prints "Latency Distribution" then lines like "     99%    5.67ms".
WRK_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class SniScenario(Scenario):
    """wrk over HTTPS (SNI ``localhost``) through the proxy in sni mode to an nginx HTTPS origin.

    The proxy routes by the ClientHello's server name and passes the TLS stream on undecrypted; the
    origin terminates TLS with a self-signed P-256 certificate for ``localhost``. The proxies are
    compared with HAProxy (``req.ssl_sni``) without splice as the first reference.
    """

    kind = "sni"
    references: tuple[str, ...] = ("haproxy", "nginx")
    #: The server name wrk sends (it is the URL's host) and the one name the proxies route.
    sni_name = "localhost"
    #: wrk -H 'Connection: close' (one connection per request) or not (keep-alive).
    close = False
    rate_key, rate_label, rate_unit = "", "", ""
    per = ""

    def metrics(self) -> list[Metric]:
        return [
            Metric(self.rate_key, self.rate_label, self.rate_unit, "higher", 0),
            Metric("p99_ms", "p99 latency (wrk --latency)", "ms", "lower", 2),
            Metric("cpu_ms_per_1k", f"proxy CPU per 1,000 {self.per}", "ms", "lower", 1),
            Metric("busy", "proxy core busy", "%", "", 0, ratio=False),
            Metric(
                "socket_errors",
                "wrk socket errors (connect+read+write+timeout)",
                "count",
                "lower",
                0,
                ratio=False,
            ),
            Metric("non_2xx", "wrk non-2xx/3xx responses", "count", "lower", 0, ratio=False),
        ]

    def setup(self) -> None:
        self._check_resolves_to_ipv4_loopback()
        rundir = self.s.workdir / f"tls-origin-{self.name}"
        rundir.mkdir(parents=True, exist_ok=True)
        cert, key = rundir / "cert.pem", rundir / "key.pem"
        openssl = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ]
        openssl += ["-subj", f"/CN={self.sni_name}", "-addext", f"subjectAltName=DNS:{self.sni_name}"]
        out = subprocess.run(
            [*openssl, "-keyout", str(key), "-out", str(cert)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if out.returncode != 0:
            raise StartError(f"openssl req failed: {out.stderr.strip()[:300]}")
        conf = rundir / "nginx.conf"
        temps = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = "\n".join(f"    {name}_temp_path {rundir}/{name};" for name in temps)
        conf.write_text(
            nginx_common(rundir, 4096, 8192)
            + f"""http {{
    access_log off;
{temp}
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.upstream_port} ssl backlog=4096;
        server_name {self.sni_name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;  # nginx < 1.23.4 would stop at TLS 1.2 by default
        location / {{
            return 200 "ok\\n";
        }}
    }}
}}
"""
        )
        self.backend = Child(
            f"nginx-tls-origin-{self.name}",
            ["nginx", "-p", f"{rundir}/", "-e", str(rundir / "error.log"), "-c", str(conf)],
            core=self.s.load_core,
            log=rundir / "output.log",
        )
        wait_listening(self.upstream_port, self.backend)

    def _check_resolves_to_ipv4_loopback(self) -> None:
        """wrk connects to the first address of the URL's host: it must be 127.0.0.1 (the proxies
        listen on IPv4 loopback only)."""
        try:
            infos = socket.getaddrinfo(self.sni_name, 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise StartError(f"{self.sni_name} does not resolve: {exc}") from exc
        first = infos[0][4][0] if infos else None
        if first != "127.0.0.1":
            raise StartError(
                f"{self.sni_name} resolves to {first} first, not 127.0.0.1: wrk would miss the proxies, "
                "which listen on 127.0.0.1 only (fix the order in /etc/hosts or gai.conf)"
            )

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        argv = ["wrk", "-t1", f"-c{self.s.wrk_connections}", f"-d{self.s.duration:g}s", "--timeout", "5s"]
        if self.close:
            argv += ["-H", "Connection: close"]
        argv += ["--latency", f"https://{self.sni_name}:{port}/"]
        pids = proxy.pids()
        t0, cpu0 = time.monotonic(), cpu_seconds(pids)
        try:
            out = self.load_cmd(argv, timeout=self.s.duration + 30)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("wrk timed out") from exc
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        match = WRK_REQUESTS.search(out.stdout)
        if out.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed (exit {out.returncode}): {(out.stderr or out.stdout)[:300]}")
        requests = int(match.group(1))
        seconds = float(match.group(2)) * WRK_UNITS.get(match.group(3), 1.0)
        errors = WRK_ERRORS.search(out.stdout)
        socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
        non2xx = WRK_NON2XX.search(out.stdout)
        p99 = WRK_P99.search(out.stdout)
        result = Measured()
        result.values[self.rate_key] = requests / seconds
        if p99:
            result.values["p99_ms"] = float(p99.group(1)) * WRK_UNITS[p99.group(2)] * 1000
        else:
            result.notes.append(f"{proxy.name} {self.name}: no 99% line in wrk's latency distribution")
        if requests:
            result.values["cpu_ms_per_1k"] = (cpu1 - cpu0) * 1000 / (requests / 1000)
        result.values["busy"] = 100 * (cpu1 - cpu0) / (t1 - t0)
        result.values["socket_errors"] = socket_errors
        result.values["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
        if socket_errors:
            result.notes.append(f"{proxy.name} {self.name}: wrk {errors.group(0) if errors else ''}")
        if requests == 0:
            raise RuntimeError(f"wrk completed no request: {out.stdout.strip()[-300:]}")
        return result


class SniNew(SniScenario):
    """A new TLS connection per request (``Connection: close``): the proxy reads and routes a
    ClientHello, dials the origin and relays the handshake, one request and the close."""

    name = "sni-new"
    title = "SNI passthrough, new TLS connections (wrk -H 'Connection: close' https://localhost)"
    close = True
    rate_key, rate_label, rate_unit = "conns_per_s", "new TLS connections/s", "conn/s"
    per = "connections"


class SniKeepalive(SniScenario):
    """wrk's connections stay open: requests/s over established passthrough connections."""

    name = "sni-keepalive"
    title = "SNI passthrough, keep-alive requests (wrk https://localhost, established connections)"
    close = False
    rate_key, rate_label, rate_unit = "req_per_s", "keep-alive requests/s", "req/s"
    per = "requests"
