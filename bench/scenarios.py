"""Benchmark scenarios: bulk transfer (iperf3), short connections (wrk), idle connections (RSS),
wrk over HTTPS with the proxies passing TLS through by SNI (sni-*) or terminating it (tls-*),
Portway's gateway listener against its tcp listener (gw-*, with the Python peers of ``gwload.py``),
and forward proxies (fwd-*: absolute-form HTTP with wrk, CONNECT tunnels with ``proxyload.py``).

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
import ssl
import subprocess
import sys
import time
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gwload import OK_STATUS, REPLY_HEAD, REPLY_TAIL, REQUEST, recv_exactly
from proctree import Child, StartError, cpu_seconds, free_port, rss_kib, wait_listening
from proxies import FORWARD, TCP, Certificate, Mode, Proxy, nginx_common

if TYPE_CHECKING:  # imported when a gateway scenario runs (it needs the venv's portway)
    from portway.proto.gateway import Keyring

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
    #: Bytes of each gw-bulk transfer.
    gw_bulk_bytes: int = 2 << 30


class Scenario(ABC):
    """A load shape run against each proxy."""

    name: str = ""
    title: str = ""
    #: The proxy mode this scenario runs in (see proxies.py): "tcp" (plain forwarding), "sni" (TLS
    #: passthrough routed by server name), "tls" (TLS terminated by the proxy) or "gateway"
    #: (Portway's gateway listener against its tcp listener).
    kind = "tcp"
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

    def proxy_mode(self) -> Mode:
        """How the proxies run in this scenario (called after ``setup``)."""
        return TCP

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


# ------------------------------------------------------------------------------------ origins


def make_certificate(rundir: Path, name: str) -> Certificate:
    """A throwaway self-signed P-256 certificate for ``name`` in ``rundir`` (valid for a day)."""
    rundir.mkdir(parents=True, exist_ok=True)
    cert = Certificate(name, cert=rundir / "cert.pem", key=rundir / "key.pem", pem=rundir / "site.pem")
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
    out = subprocess.run(
        [*argv, "-keyout", str(cert.key), "-out", str(cert.cert)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if out.returncode != 0:
        raise StartError(f"openssl req failed: {out.stderr.strip()[:300]}")
    cert.pem.write_text(cert.cert.read_text() + cert.key.read_text())
    return cert


#: The origin's request counter (nginx stub_status), asked for by the forward scenarios.
STATUS_PATH = "/__bench_status"
STATUS_LOCATION = f"""        location = {STATUS_PATH} {{
            stub_status;
        }}
"""


def nginx_origin(
    label: str,
    rundir: Path,
    port: int,
    core: int,
    *,
    keepalive_requests: int | None = None,
    tls: Certificate | None = None,
    status: bool = False,
) -> Child:
    """Start an nginx origin on ``core`` that answers every request with 200 "ok\\n" (access log off),
    over HTTPS with ``tls`` (TLS 1.2 and 1.3), else plain HTTP; return it once it listens. With
    ``status``, ``/__bench_status`` is nginx's stub_status (the requests it has seen)."""
    rundir.mkdir(parents=True, exist_ok=True)
    conf = rundir / "nginx.conf"
    temps = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    head = "\n".join(f"    {name}_temp_path {rundir}/{name};" for name in temps) + "\n"
    if keepalive_requests:
        head += f"    keepalive_requests {keepalive_requests};\n"
    listen = f"127.0.0.1:{port} backlog=4096"
    ssl_lines = ""
    if tls:
        listen = f"127.0.0.1:{port} ssl backlog=4096"
        ssl_lines = f"""        server_name {tls.name};
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;  # nginx < 1.23.4 would stop at TLS 1.2 by default
"""
    conf.write_text(
        nginx_common(rundir, 4096, 8192)
        + f"""http {{
    access_log off;
{head}    server {{
        listen {listen};
{ssl_lines}        location / {{
            return 200 "ok\\n";
        }}
{STATUS_LOCATION if status else ""}    }}
}}
"""
    )
    origin = Child(
        label,
        ["nginx", "-p", f"{rundir}/", "-e", str(rundir / "error.log"), "-c", str(conf)],
        core=core,
        log=rundir / "output.log",
    )
    wait_listening(port, origin)
    return origin


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
        self.backend = nginx_origin("nginx-origin", rundir, self.upstream_port, self.s.load_core)

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


# ------------------------------------------------------------------------------------ https


#: wrk --latency prints "Latency Distribution" then lines like "     99%    5.67ms".
WRK_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class HttpsScenario(Scenario):
    """wrk over HTTPS (``https://localhost:PORT/``) through the proxy, to an nginx origin on the load core.

    The base of the sni and tls scenarios: ``setup`` makes a throwaway self-signed P-256 certificate
    for ``localhost`` and starts the origin (:meth:`start_origin`); each measurement first checks one
    request by hand (:meth:`probe`: the bench certificate is served and the origin answers), then runs
    wrk, with ``Connection: close`` (``close``: a new TLS connection per request) or without (requests
    over established connections). The proxies are compared with HAProxy without splice as the first
    reference.
    """

    references: tuple[str, ...] = ("haproxy", "nginx")
    #: The server name wrk sends (it is the URL's host) and the certificate's name.
    server_name = "localhost"
    #: wrk -H 'Connection: close' (one connection per request) or not (keep-alive).
    close = False

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.certificate: Certificate | None = None

    @abstractmethod
    def start_origin(self, rundir: Path, certificate: Certificate) -> Child:
        """Start the origin on the load core, listening on ``upstream_port``."""

    def rate_metric(self) -> Metric:
        """What wrk's rate measures: new TLS connections (``close``) or keep-alive requests."""
        if self.close:
            return Metric("conns_per_s", "new TLS connections/s", "conn/s", "higher", 0)
        return Metric("req_per_s", "keep-alive requests/s", "req/s", "higher", 0)

    def metrics(self) -> list[Metric]:
        per = "connections" if self.close else "requests"
        return [
            self.rate_metric(),
            Metric("p99_ms", "p99 latency (wrk --latency)", "ms", "lower", 2),
            Metric("cpu_ms_per_1k", f"proxy CPU per 1,000 {per}", "ms", "lower", 1),
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
        rundir = self.s.workdir / f"origin-{self.name}"
        self.certificate = make_certificate(rundir, self.server_name)
        self.backend = self.start_origin(rundir, self.certificate)

    def _check_resolves_to_ipv4_loopback(self) -> None:
        """wrk connects to the first address of the URL's host: it must be 127.0.0.1 (the proxies
        listen on IPv4 loopback only)."""
        try:
            infos = socket.getaddrinfo(self.server_name, 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise StartError(f"{self.server_name} does not resolve: {exc}") from exc
        first = infos[0][4][0] if infos else None
        if first != "127.0.0.1":
            raise StartError(
                f"{self.server_name} resolves to {first} first, not 127.0.0.1: wrk would miss the "
                "proxies, which listen on 127.0.0.1 only (fix the order in /etc/hosts or gai.conf)"
            )

    def probe(self, port: int) -> str:
        """One HTTPS request through the proxy, before the load: check that the bench certificate
        is the one served and that the origin answers 200 "ok"; return the TLS version."""
        assert self.certificate is not None
        expected = ssl.PEM_cert_to_DER_cert(self.certificate.cert.read_text())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # compared by hand below
        context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF  # a close without close_notify is not our test
        request = f"GET / HTTP/1.1\r\nHost: {self.server_name}\r\nConnection: close\r\n\r\n"
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=self.server_name) as tls,
            ):
                served, version = tls.getpeercert(binary_form=True), tls.version() or "?"
                tls.sendall(request.encode())
                response = b""
                while chunk := tls.recv(4096):
                    response += chunk
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"HTTPS probe failed: {exc}") from exc
        if served != expected:
            raise RuntimeError("HTTPS probe: the certificate served is not the bench certificate")
        if not response.startswith(b"HTTP/1.1 200") or not response.endswith(b"\r\n\r\nok\n"):
            raise RuntimeError(f"HTTPS probe: unexpected answer {response[:200]!r}")
        return version

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        version = self.probe(port)
        argv = ["wrk", "-t1", f"-c{self.s.wrk_connections}", f"-d{self.s.duration:g}s", "--timeout", "5s"]
        if self.close:
            argv += ["-H", "Connection: close"]
        argv += ["--latency", f"https://{self.server_name}:{port}/"]
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
        result.values[self.rate_metric().key] = requests / seconds
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
        if version != "TLSv1.3":
            result.notes.append(f"{proxy.name} {self.name}: the probe negotiated {version}, not TLSv1.3")
        if requests == 0:
            raise RuntimeError(f"wrk completed no request: {out.stdout.strip()[-300:]}")
        return result


class SniScenario(HttpsScenario):
    """SNI passthrough: the proxy routes by the ClientHello's server name (only ``localhost``) and
    passes the TLS stream on undecrypted; the nginx origin terminates TLS with the certificate."""

    kind = "sni"

    def start_origin(self, rundir: Path, certificate: Certificate) -> Child:
        return nginx_origin(
            f"nginx-tls-origin-{self.name}",
            rundir,
            self.upstream_port,
            self.s.load_core,
            keepalive_requests=100000,
            tls=certificate,
        )

    def proxy_mode(self) -> Mode:
        return Mode("sni", server_name=self.server_name)


class TlsScenario(HttpsScenario):
    """TLS termination: the proxy completes the handshake with the certificate (for every server
    name: no SNI routing) and forwards plaintext HTTP to a plain nginx origin (the short scenario's,
    with ``keepalive_requests 100000`` so that keep-alive connections stay up)."""

    kind = "tls"

    def start_origin(self, rundir: Path, certificate: Certificate) -> Child:
        return nginx_origin(
            f"nginx-origin-{self.name}",
            rundir,
            self.upstream_port,
            self.s.load_core,
            keepalive_requests=100000,
        )

    def proxy_mode(self) -> Mode:
        assert self.certificate is not None, "setup() makes the certificate"
        return Mode("tls", certificate=self.certificate)


class SniNew(SniScenario):
    """A new TLS connection per request (``Connection: close``): the proxy reads and routes a
    ClientHello, dials the origin and relays the handshake, one request and the close."""

    name = "sni-new"
    title = "SNI passthrough, new TLS connections (wrk -H 'Connection: close' https://localhost)"
    close = True


class SniKeepalive(SniScenario):
    """wrk's connections stay open: requests/s over established passthrough connections."""

    name = "sni-keepalive"
    title = "SNI passthrough, keep-alive requests (wrk https://localhost, established connections)"


class TlsNew(TlsScenario):
    """A new TLS connection per request (``Connection: close``): the proxy does the handshake, dials
    the origin, decrypts one request, encrypts the response, and closes."""

    name = "tls-new"
    title = "TLS termination, new TLS connections (wrk -H 'Connection: close' https://localhost)"
    close = True


class TlsKeepalive(TlsScenario):
    """wrk's connections stay open: requests/s over established terminated connections."""

    name = "tls-keepalive"
    title = "TLS termination, keep-alive requests (wrk https://localhost, established connections)"


# ------------------------------------------------------------------------------------ gateway


class GatewayScenario(Scenario):
    """Portway's gateway listener against its own tcp listener (see proxies.py, gateway mode).

    ``setup`` makes a throwaway v2 key (the gateway listeners' keyring) and starts the origin. Each
    measurement through a gateway listener gets a fresh token for ``127.0.0.1:<origin port>``
    (valid for an hour), with which the load generator (``gwload.py``, on the load core) does the
    handshake on every connection; through the tcp listener it connects straight through. Ratios
    are portway-gateway ÷ portway (tcp).
    """

    kind = "gateway"
    references: tuple[str, ...] = ("portway",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.keyring_line: str | None = None
        self.keyring: Keyring | None = None

    @abstractmethod
    def start_origin(self) -> Child:
        """Start the origin on the load core, listening on ``upstream_port``."""

    def setup(self) -> None:
        try:
            from portway.proto.gateway import Keyring
        except ImportError as exc:
            raise StartError(
                f"the gateway scenarios make their tokens with portway.proto.gateway: {exc} "
                "(run the harness with .venv/bin/python)"
            ) from exc
        self.keyring_line = Keyring.new_line()
        self.keyring = Keyring.parse(self.keyring_line)
        self.backend = self.start_origin()

    def proxy_mode(self) -> Mode:
        return Mode("gateway", keyring_line=self.keyring_line)

    def token(self, proxy: Proxy) -> str | None:
        """A token for the origin if ``proxy`` listens as a gateway, else None (no handshake)."""
        if not proxy.gateway_handshake:
            return None
        from portway.proto.gateway import v2_encrypt

        assert self.keyring is not None, "setup() makes the keyring"
        address = f"127.0.0.1:{self.upstream_port}"
        return v2_encrypt(address, self.keyring, expires=time.time() + 3600).decode("ascii")

    def gwload(self, command: str, port: int, token: str | None, *options: str) -> dict[str, Any]:
        """Run ``gwload.py COMMAND PORT OPTIONS [--token]`` on the load core; return its JSON."""
        argv = [sys.executable, str(HERE / "gwload.py"), command, str(port), *options]
        if token is not None:
            argv += ["--token", token]
        try:
            out = self.load_cmd(argv, timeout=self.timeout())
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"gwload.py {command} timed out") from exc
        try:
            data: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError as exc:
            raise RuntimeError(
                f"gwload.py {command} failed (exit {out.returncode}): {(out.stderr or out.stdout)[-300:]}"
            ) from exc
        data["stderr"] = out.stderr.strip()[-300:]
        return data

    def timeout(self) -> float:
        """How long one run of the load generator may take."""
        return self.s.duration + 30


class GwConnect(GatewayScenario):
    """New connections with a fixed concurrency, each: connect → [token line, read ``200``] → one
    small HTTP request (``Connection: close``) to the short scenario's nginx origin → read to EOF →
    close. The load generator is Python (``gwload.py connect``): the comparable figure is the
    proxy's CPU per connection."""

    name = "gw-connect"
    title = "Gateway vs tcp listener, new connections (gwload.py connect: [token, 200,] HTTP GET, EOF)"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.title = (
            f"Gateway vs tcp listener, new connections (gwload.py connect, {settings.wrk_connections} "
            "concurrent: connect, [token line, read 200,] one HTTP GET with Connection: close, read to EOF)"
        )

    def metrics(self) -> list[Metric]:
        return [
            Metric("conns_per_s", "connections/s", "conn/s", "higher", 0),
            Metric("p99_ms", "p99 connection latency (connect → EOF)", "ms", "lower", 2),
            Metric("cpu_ms_per_1k", "proxy CPU per 1,000 connections", "ms", "lower", 1),
            Metric("busy", "proxy core busy", "%", "", 0, ratio=False),
            Metric("connections", "connections completed", "count", "", 0, ratio=False),
            Metric("status_200", "gateway 200 replies", "count", "", 0, ratio=False),
            Metric(
                "errors",
                "errors (connect, status not 200, bad reply, timeout)",
                "count",
                "lower",
                0,
                ratio=False,
            ),
            Metric("generator_busy", "load generator CPU (of the load core)", "%", "", 0, ratio=False),
            Metric("load_core_busy", "load core busy (generator + origin + kernel)", "%", "", 0, ratio=False),
        ]

    def start_origin(self) -> Child:
        rundir = self.s.workdir / f"origin-{self.name}"
        return nginx_origin("nginx-origin-gw", rundir, self.upstream_port, self.s.load_core)

    def probe(self, port: int, token: str | None) -> None:
        """One connection by hand before the load: [the handshake is answered 200 and] the origin's
        reply comes back whole."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                if token is not None:
                    sock.sendall(token.encode("ascii") + b"\n")
                    status = recv_exactly(sock, len(OK_STATUS))
                    if status != OK_STATUS:
                        raise RuntimeError(f"gateway probe: answered {status!r}, not 200")
                sock.sendall(REQUEST)
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
        except OSError as exc:
            raise RuntimeError(f"probe failed: {exc}") from exc
        if not reply.startswith(REPLY_HEAD) or not reply.endswith(REPLY_TAIL):
            raise RuntimeError(f"probe: unexpected answer {reply[:200]!r}")

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        token = self.token(proxy)
        self.probe(port, token)
        options = [
            f"--duration={self.s.duration:g}",
            f"--concurrency={self.s.wrk_connections}",
            "--timeout=5",
        ]
        pids = proxy.pids()
        cpu0 = cpu_seconds(pids)
        data = self.gwload("connect", port, token, *options)
        cpu = cpu_seconds(pids) - cpu0
        connections = int(data["connections"])
        errors = sum(data["errors"].values())
        result = Measured()
        result.values["conns_per_s"] = connections / data["seconds"]
        if data["p99_ms"] is not None:
            result.values["p99_ms"] = data["p99_ms"]
        if connections:
            result.values["cpu_ms_per_1k"] = cpu * 1000 / (connections / 1000)
        result.values["busy"] = 100 * cpu / data["seconds"]
        result.values["connections"] = connections
        result.values["errors"] = errors
        result.values["generator_busy"] = data["generator_busy"]
        result.values["load_core_busy"] = data["load_core_busy"]
        if token is not None:
            result.values["status_200"] = data["status_200"]
            if data["status_200"] < connections:
                raise RuntimeError(f"{connections} connections completed but only {data['status_200']} 200s")
        if errors:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(data["errors"].items()))
            stderr = f"; stderr: {data['stderr']}" if data["stderr"] else ""
            result.notes.append(f"{proxy.name} {self.name}: {errors} failed connections ({kinds}){stderr}")
        if data.get("loop") != "uvloop":
            result.notes.append(f"{self.name}: gwload.py ran on {data.get('loop')}, not uvloop")
        if connections == 0:
            raise RuntimeError(f"no connection completed: {data}")
        return result


#: (case, gwload.py bulk --direction, label)
GW_BULK_VARIANTS: list[tuple[str, str, str]] = [
    ("up", "up", "client → origin"),
    ("down", "down", "origin → client"),
]


class GwBulk(GatewayScenario):
    """One bulk transfer through one connection each way (``gwload.py bulk``, Python, a large
    ``sendall`` of a preallocated buffer against a ``recv_into`` sink), after the handshake through
    the gateway listener: Gbit/s and proxy CPU per GB."""

    name = "gw-bulk"
    title = "Gateway vs tcp listener, bulk transfer over one connection (gwload.py bulk, Python peers)"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.title = (
            f"Gateway vs tcp listener, bulk transfer of {settings.gw_bulk_bytes / (1 << 20):,.0f} MiB over "
            "one connection each way (gwload.py bulk: Python sendall / recv_into, after [token line, 200])"
        )

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        for key, _, label in GW_BULK_VARIANTS:
            out.append(Metric(f"{key}_gbps", f"{label}: throughput", "Gbit/s", "higher"))
            out.append(Metric(f"{key}_cpu_s_per_gb", f"{label}: proxy CPU", "s/GB", "lower"))
            out.append(Metric(f"{key}_busy", f"{label}: proxy core busy", "%", "", 0, ratio=False))
            out.append(
                Metric(f"{key}_load_busy", f"{label}: load core busy (both peers)", "%", "", 0, ratio=False)
            )
        return out

    def start_origin(self) -> Child:
        origin = Child(
            "gwload-origin",
            [sys.executable, str(HERE / "gwload.py"), "origin", str(self.upstream_port)],
            core=self.s.load_core,
            log=self.s.workdir / "gwload-origin.log",
        )
        wait_listening(self.upstream_port, origin)
        return origin

    def cases(self) -> list[str]:
        return [key for key, _, _ in GW_BULK_VARIANTS]

    def timeout(self) -> float:
        return 60 + self.s.gw_bulk_bytes / 50e6  # at least 400 Mbit/s

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        _, direction, _ = next(v for v in GW_BULK_VARIANTS if v[0] == case)
        total = self.s.gw_bulk_bytes
        pids = proxy.pids()
        cpu0 = cpu_seconds(pids)
        data = self.gwload("bulk", port, self.token(proxy), f"--bytes={total}", f"--direction={direction}")
        cpu = cpu_seconds(pids) - cpu0
        if data["bytes"] != total:
            raise RuntimeError(f"{direction}: {data['bytes']} bytes arrived, not {total}")
        result = Measured()
        result.values[f"{case}_gbps"] = total * 8 / data["seconds"] / 1e9
        result.values[f"{case}_cpu_s_per_gb"] = cpu / (total / 1e9)
        result.values[f"{case}_busy"] = 100 * cpu / data["seconds"]
        result.values[f"{case}_load_busy"] = data["load_core_busy"]
        return result


# ------------------------------------------------------------------------------------ forward


STUB_REQUESTS = re.compile(r"server accepts handled requests\s+\d+\s+\d+\s+(\d+)")


class ForwardScenario(Scenario):
    """A forward proxy in front of the short scenario's nginx origin (``keepalive_requests 100000``,
    and stub_status to count the requests it has seen).

    Clients name the origin in each request (absolute-form ``GET http://127.0.0.1:ORIGIN/`` or
    ``CONNECT 127.0.0.1:ORIGIN``): the proxies allow that one destination only. Each measurement
    first sends one request through the proxy by hand (:meth:`probe`) and checks that the origin
    saw it; after the load, the origin must have seen at least as many requests as completed.
    Ratios are against squid, then tinyproxy.
    """

    kind = "forward"
    references: tuple[str, ...] = ("squid", "tinyproxy")

    def setup(self) -> None:
        rundir = self.s.workdir / f"origin-{self.name}"
        self.backend = nginx_origin(
            f"nginx-origin-{self.name}",
            rundir,
            self.upstream_port,
            self.s.load_core,
            keepalive_requests=100000,
            status=True,
        )

    def proxy_mode(self) -> Mode:
        return FORWARD

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.upstream_port}"

    def origin_requests(self) -> int:
        """The origin's request count so far (this stub_status request included), asked directly."""
        url = f"http://{self.target}{STATUS_PATH}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via *_proxy
        with opener.open(url, timeout=10) as reply:
            text = reply.read().decode()
        match = STUB_REQUESTS.search(text)
        if match is None:
            raise RuntimeError(f"origin stub_status unreadable: {text[:200]!r}")
        return int(match.group(1))

    def origin_seen_since(self, before: int) -> int:
        """Requests the origin served since ``before`` (a reading of :meth:`origin_requests`), not
        counting the stub_status requests themselves."""
        return self.origin_requests() - before - 1

    @abstractmethod
    def probe_request(self, sock: socket.socket) -> bytes:
        """Talk to the proxy on ``sock`` for one request to the origin; return the reply to EOF."""

    def probe(self, proxy: Proxy, port: int) -> None:
        """One request through the proxy by hand: the origin's ``200 ok`` comes back and the origin
        saw exactly that request."""
        before = self.origin_requests()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                reply = self.probe_request(sock)
        except OSError as exc:
            raise RuntimeError(f"probe through {proxy.name} failed: {exc}") from exc
        if not reply.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")) or not reply.endswith(b"\r\n\r\nok\n"):
            raise RuntimeError(f"probe through {proxy.name}: unexpected answer {reply[:300]!r}")
        seen = self.origin_seen_since(before)
        if seen != 1:
            raise RuntimeError(f"probe through {proxy.name}: the origin saw {seen} requests, not 1")

    def check_origin(self, proxy: Proxy, before: int, completed: int, result: Measured) -> None:
        """After the load: the origin must have served every request counted as completed."""
        seen = self.origin_seen_since(before)
        result.values["origin_requests"] = seen
        if seen < completed:
            raise RuntimeError(f"{completed} requests completed but the origin saw only {seen}")


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


AB_COMPLETE = re.compile(r"^Complete requests:\s+(\d+)", re.MULTILINE)
AB_FAILED = re.compile(r"^Failed requests:\s+(\d+)", re.MULTILINE)
AB_NON2XX = re.compile(r"^Non-2xx responses:\s+(\d+)", re.MULTILINE)
AB_WRITE_ERRORS = re.compile(r"^Write errors:\s+(\d+)", re.MULTILINE)
AB_SECONDS = re.compile(r"^Time taken for tests:\s+([\d.]+) seconds", re.MULTILINE)
#: ab's "Percentage of the requests served within a certain time (ms)" table: whole milliseconds.
AB_P99 = re.compile(r"^\s*99%\s+(\d+)\s*$", re.MULTILINE)


class ForwardHttp(ForwardScenario):
    """ab through the proxy (``-X 127.0.0.1:PORT``: absolute-form HTTP/1.0 requests for
    ``http://127.0.0.1:ORIGIN/``), ``--wrk-connections`` concurrent for ``--duration``: without
    ``-k`` a new client connection per request, with ``-k`` (``keepalive``) keep-alive requests
    as far as the proxy keeps the client connection open.

    ab rather than wrk: wrk reuses a connection whose response did not say ``Connection: close``,
    so a proxy that closes after answering without saying so (tinyproxy does) shows one wrk read
    error per request although every response arrived whole; ab (HTTP/1.0) does not.
    """

    keepalive = False

    def rate_metric(self) -> Metric:
        if self.keepalive:
            return Metric("req_per_s", "requests/s (ab -k, keep-alive clients)", "req/s", "higher", 0)
        return Metric("req_per_s", "requests/s (new connection each)", "req/s", "higher", 0)

    def metrics(self) -> list[Metric]:
        return [
            self.rate_metric(),
            Metric("p99_ms", "p99 latency (ab, whole ms)", "ms", "lower", 0),
            Metric("cpu_ms_per_1k", "proxy CPU per 1,000 requests", "ms", "lower", 1),
            Metric("busy", "proxy core busy", "%", "", 0, ratio=False),
            Metric("requests", "requests completed (ab)", "count", "", 0, ratio=False),
            Metric("origin_requests", "requests the origin served", "count", "", 0, ratio=False),
            Metric("errors", "ab failed requests + write errors", "count", "lower", 0, ratio=False),
            Metric("non_2xx", "ab non-2xx responses", "count", "lower", 0, ratio=False),
        ]

    def probe_request(self, sock: socket.socket) -> bytes:
        head = f"GET http://{self.target}/ HTTP/1.1\r\nHost: {self.target}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        return _read_to_eof(sock)

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        self.probe(proxy, port)
        # -t first: it implies -n 50000, which the -n after it lifts; -r: a receive error is
        # counted, it does not end the run; -s: the per-request timeout
        argv = ["ab", "-t", f"{self.s.duration:g}", "-n", "100000000", "-c", str(self.s.wrk_connections)]
        argv += ["-s", "5", "-r", "-X", f"127.0.0.1:{port}"]
        if self.keepalive:
            argv.append("-k")
        argv.append(f"http://{self.target}/")
        before = self.origin_requests()
        pids = proxy.pids()
        t0, cpu0 = time.monotonic(), cpu_seconds(pids)
        try:
            out = self.load_cmd(argv, timeout=self.s.duration + 30)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("ab timed out") from exc
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        complete, seconds = AB_COMPLETE.search(out.stdout), AB_SECONDS.search(out.stdout)
        if out.returncode != 0 or complete is None or seconds is None:
            raise RuntimeError(f"ab failed (exit {out.returncode}): {(out.stderr or out.stdout)[-300:]}")

        def count(pattern: re.Pattern[str]) -> int:
            match = pattern.search(out.stdout)
            return int(match.group(1)) if match else 0

        failed, write_errors, non2xx = count(AB_FAILED), count(AB_WRITE_ERRORS), count(AB_NON2XX)
        requests = int(complete.group(1))
        good = requests - non2xx  # counted only when failed == write_errors == non2xx == 0
        p99 = AB_P99.search(out.stdout)
        result = Measured()
        result.values["busy"] = 100 * (cpu1 - cpu0) / (t1 - t0)
        result.values["requests"] = requests
        result.values["errors"] = failed + write_errors
        result.values["non_2xx"] = non2xx
        if failed or write_errors or non2xx:
            # must be 0 to count: the rate, latency and CPU figures of this run are left out
            result.notes.append(
                f"{proxy.name} {self.name}: ab failed {failed}, write errors {write_errors}, non-2xx "
                f"{non2xx}: the run's rate, p99 and CPU are not counted"
            )
        else:
            result.values["req_per_s"] = good / float(seconds.group(1))
            if p99:
                result.values["p99_ms"] = float(p99.group(1))
            if good:
                result.values["cpu_ms_per_1k"] = (cpu1 - cpu0) * 1000 / (good / 1000)
        if requests == 0:
            raise RuntimeError(f"ab completed no request: {out.stdout.strip()[-300:]}")
        self.check_origin(proxy, before, 0 if result.notes else good, result)
        return result


class FwdNew(ForwardHttp):
    """A new client connection per plain-HTTP request (ab without ``-k``)."""

    name = "fwd-new"
    title = "Forward proxy, plain HTTP, a new client connection per request (ab -X, absolute-form, HTTP/1.0)"


class FwdKeepalive(ForwardHttp):
    """ab ``-k``: clients ask to keep the connection; a proxy that closes after each response makes
    ab reconnect (Portway does, in this version)."""

    name = "fwd-keepalive"
    title = "Forward proxy, plain HTTP, keep-alive clients (ab -k -X; a proxy may close anyway)"
    keepalive = True


class FwdConnect(ForwardScenario):
    """CONNECT tunnels with a fixed concurrency (``proxyload.py connect-tunnel``, Python on uvloop on
    the load core): CONNECT → ``200`` → one HTTP GET with ``Connection: close`` through the tunnel →
    read to EOF → close."""

    name = "fwd-connect"
    title = "Forward proxy, CONNECT tunnels"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.title = (
            f"Forward proxy, CONNECT tunnels (proxyload.py connect-tunnel, {settings.wrk_connections} "
            "concurrent: CONNECT, read 200, one HTTP GET with Connection: close, read to EOF)"
        )

    def metrics(self) -> list[Metric]:
        return [
            Metric("tunnels_per_s", "tunnels/s", "tunnel/s", "higher", 0),
            Metric("p99_ms", "p99 tunnel latency (connect → EOF)", "ms", "lower", 2),
            Metric("cpu_ms_per_1k", "proxy CPU per 1,000 tunnels", "ms", "lower", 1),
            Metric("busy", "proxy core busy", "%", "", 0, ratio=False),
            Metric("tunnels", "tunnels completed", "count", "", 0, ratio=False),
            Metric("origin_requests", "requests the origin served", "count", "", 0, ratio=False),
            Metric(
                "errors",
                "errors (connect, status not 200, bad reply, timeout)",
                "count",
                "lower",
                0,
                ratio=False,
            ),
            Metric("generator_busy", "load generator CPU (of the load core)", "%", "", 0, ratio=False),
            Metric("load_core_busy", "load core busy (generator + origin + kernel)", "%", "", 0, ratio=False),
        ]

    def probe_request(self, sock: socket.socket) -> bytes:
        sock.sendall(f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: nothing of the tunnel is read with the head
            if not chunk:
                raise RuntimeError(f"CONNECT probe: the proxy closed after {head!r}")
            head += chunk
        if not re.match(rb"HTTP/1\.[01] 200[ \r]", head):
            raise RuntimeError(f"CONNECT probe: answered {head[:200]!r}")
        sock.sendall(REQUEST)
        return _read_to_eof(sock)

    def measure(self, proxy: Proxy, port: int, case: str) -> Measured:
        self.probe(proxy, port)
        argv = [sys.executable, str(HERE / "proxyload.py"), "connect-tunnel", str(port)]
        argv += [f"--target={self.target}", f"--duration={self.s.duration:g}"]
        argv += [f"--concurrency={self.s.wrk_connections}", "--timeout=5"]
        before = self.origin_requests()
        pids = proxy.pids()
        cpu0 = cpu_seconds(pids)
        try:
            out = self.load_cmd(argv, timeout=self.s.duration + 30)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("proxyload.py timed out") from exc
        cpu = cpu_seconds(pids) - cpu0
        try:
            data: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError as exc:
            raise RuntimeError(
                f"proxyload.py failed (exit {out.returncode}): {(out.stderr or out.stdout)[-300:]}"
            ) from exc
        tunnels = int(data["tunnels"])
        errors = sum(data["errors"].values())
        result = Measured()
        if not errors:  # must be 0 to count: else the run's rate, p99 and CPU are left out
            result.values["tunnels_per_s"] = tunnels / data["seconds"]
            if data["p99_ms"] is not None:
                result.values["p99_ms"] = data["p99_ms"]
            if tunnels:
                result.values["cpu_ms_per_1k"] = cpu * 1000 / (tunnels / 1000)
        result.values["busy"] = 100 * cpu / data["seconds"]
        result.values["tunnels"] = tunnels
        result.values["errors"] = errors
        result.values["generator_busy"] = data["generator_busy"]
        result.values["load_core_busy"] = data["load_core_busy"]
        if errors:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(data["errors"].items()))
            stderr = out.stderr.strip()[-300:]
            result.notes.append(
                f"{proxy.name} {self.name}: {errors} failed tunnels ({kinds}): the run's rate, p99 and CPU "
                "are not counted" + (f"; stderr: {stderr}" if stderr else "")
            )
        if data.get("loop") != "uvloop":
            result.notes.append(f"{self.name}: proxyload.py ran on {data.get('loop')}, not uvloop")
        if tunnels == 0:
            raise RuntimeError(f"no tunnel completed: {data}")
        self.check_origin(proxy, before, tunnels, result)
        return result
