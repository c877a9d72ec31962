"""The proxies under test, one small class each: ``start(listen, upstream)``, ``pids()``, ``stop()``.

Every proxy runs with one worker (one process or one thread doing the work), pinned to the proxy core,
listening on 127.0.0.1 and forwarding to one upstream on 127.0.0.1. To add a proxy, subclass
:class:`Proxy`, implement ``write_config`` and ``argv``, and add it to :data:`PROXY_CLASSES`.

A proxy runs in one of five modes, chosen by the scenario (a :class:`Mode`, ``self.mode`` while it
runs):

- ``tcp``: plain forwarding to the upstream;
- ``sni``: TLS passthrough routed by the ClientHello's server name: only ``mode.server_name`` goes to
  the upstream, which does the TLS;
- ``tls``: TLS termination with ``mode.certificate`` for every connection, whatever name it asks for
  (no SNI routing), and plaintext to the upstream;
- ``gateway``: Portway's own comparison of its gateway listener with its tcp listener. ``portway``
  runs its tcp listener (the baseline: clients connect straight through) and ``portway-gateway`` a
  ``mode = "gateway"`` listener with the key of ``mode.keyring_line`` that lets tokens lead to the
  upstream only (clients send a token line and read ``200`` first: ``gateway_handshake``). The
  other proxies have no gateway mode.
- ``forward``: a forward proxy (Portway ``mode = "http-proxy"``, squid, tinyproxy, proxy.py, pproxy,
  mitmdump): clients send absolute-form HTTP requests or ``CONNECT`` for the upstream, which is the
  only destination allowed. The tcp/sni/tls peers have no forward mode, and the forward peers
  nothing else.

``modes`` says which a proxy supports (sniproxy only has sni; with TLS terminated in the proxy there
is nothing to splice, so the relay/splice variants portway-copy and haproxy-splice have no tls mode).
``description``, ``sni_description``, ``tls_description``, ``gateway_description`` and
``forward_description`` say how it is configured in each (the report shows those of the modes that ran).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from proctree import Child, StartError, pin_tree, tree_pids, wait_listening

REPO = Path(__file__).resolve().parent.parent

#: File descriptors kept aside in a proxy for listeners, logs, pipes, epoll...; the rest is 2 per
#: proxied connection (client side + server side).
FD_RESERVE = 512

#: Every mode, in report order (see the module docstring).
MODES = ("tcp", "sni", "tls", "gateway", "forward")
#: The modes every proxy has unless it says otherwise (gateway is Portway's own, forward is the
#: forward proxies').
COMMON_MODES = ("tcp", "sni", "tls")


@dataclass(frozen=True)
class Certificate:
    """A throwaway self-signed certificate for ``name``: certificate and key as two PEM files, and
    ``pem``, one file with both (what Portway's ``certificates`` and HAProxy's ``crt`` take)."""

    name: str
    cert: Path
    key: Path
    pem: Path


@dataclass(frozen=True)
class Mode:
    """How a proxy forwards in a scenario: ``kind`` is one of :data:`MODES`; ``server_name`` is the
    one name routed in sni mode, ``certificate`` the one served in tls mode, ``keyring_line`` the
    one v2 key (``"<kid> <base64 key>"``) of a gateway listener in gateway mode."""

    kind: str = "tcp"
    server_name: str | None = None
    certificate: Certificate | None = None
    keyring_line: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in MODES:
            raise ValueError(f"unknown mode {self.kind!r}")
        if (self.kind == "sni") != (self.server_name is not None):
            raise ValueError("sni mode, and only it, needs a server_name")
        if (self.kind == "tls") != (self.certificate is not None):
            raise ValueError("tls mode, and only it, needs a certificate")
        if (self.kind == "gateway") != (self.keyring_line is not None):
            raise ValueError("gateway mode, and only it, needs a keyring_line")

    @property
    def cert(self) -> Certificate:
        """The certificate of tls mode."""
        assert self.certificate is not None, "only tls mode has a certificate"
        return self.certificate


TCP = Mode()
FORWARD = Mode("forward")


@dataclass
class Context:
    """What every proxy needs to know about the run."""

    workdir: Path
    proxy_core: int
    fd_limit: int
    portway_cmd: list[str] = field(default_factory=list)

    @property
    def max_proxied(self) -> int:
        """How many concurrent proxied connections the fd limit allows (2 fds each)."""
        return (self.fd_limit - FD_RESERVE) // 2


class Proxy(ABC):
    """A proxy started fresh for each measurement and stopped afterwards."""

    name: str = ""
    #: How it is configured in the tcp scenarios (and the fallback when it ran in none).
    description: str = ""
    #: How it is configured in the sni scenarios.
    sni_description: str = ""
    #: How it is configured in the tls (termination) scenarios.
    tls_description: str = ""
    #: How it is configured in the gateway scenarios.
    gateway_description: str = ""
    #: How it is configured in the forward-proxy scenarios.
    forward_description: str = ""
    #: The modes this proxy can run in, a subset of :data:`MODES`.
    modes: tuple[str, ...] = COMMON_MODES
    #: In gateway mode: whether clients must send a token line and read ``200`` before their data.
    gateway_handshake: bool = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.child: Child | None = None
        #: The mode of the current (or last) run, set by :meth:`start`.
        self.mode = TCP

    # -- to implement -------------------------------------------------------------------------

    @abstractmethod
    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        """Write the config file for this run into ``rundir``; return its path."""

    @abstractmethod
    def argv(self, config: Path, rundir: Path) -> list[str]:
        """The command line that runs the proxy in the foreground."""

    def unavailable(self) -> str | None:
        """Why this proxy cannot run here (None if it can)."""
        return None

    def version(self) -> str:
        """A one-line version string for the report."""
        return "unknown"

    # -- common -------------------------------------------------------------------------------

    def mode_description(self, kind: str) -> str:
        """How this proxy is configured in mode ``kind``."""
        return {
            "tcp": self.description,
            "sni": self.sni_description,
            "tls": self.tls_description,
            "gateway": self.gateway_description,
            "forward": self.forward_description,
        }[kind]

    def start(self, listen_port: int, upstream_port: int, tag: str, mode: Mode = TCP) -> None:
        """Start the proxy in ``mode``, wait until it accepts connections, and pin its whole tree to
        the proxy core."""
        if mode.kind not in self.modes:
            raise StartError(f"{self.name} has no {mode.kind} mode")
        self.mode = mode
        rundir = self.ctx.workdir / f"{self.name}-{tag}"
        rundir.mkdir(parents=True, exist_ok=True)
        config = self.write_config(listen_port, upstream_port, rundir)
        argv = self.argv(config, rundir)
        self.child = Child(self.name, argv, core=self.ctx.proxy_core, log=rundir / "output.log", cwd=rundir)
        wait_listening(listen_port, self.child)
        pin_tree(self.child.pid, self.ctx.proxy_core)

    def pids(self) -> list[int]:
        """The proxy's process tree: the pid we started and all its descendants."""
        return tree_pids(self.child.pid) if self.child else []

    def stop(self) -> None:
        """Stop the proxy and everything it started."""
        if self.child is not None:
            self.child.stop()
            self.child = None


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text and out.returncode == 0 else "unknown"


# ------------------------------------------------------------------------------------ Portway


class Portway(Proxy):
    """Portway, one worker, one listener, with its default ``relay = "auto"`` (splice when it pays).

    In gateway mode it runs its tcp listener: the baseline that :class:`PortwayGateway` is compared
    with.
    """

    name = "portway"
    relay = "auto"
    modes = MODES
    tls_description = (
        'Portway mode = "tls", certificates = ["site.pem"] (one self-signed P-256 certificate for '
        'localhost, chain + key), backend = "origin", workers = 1 (TCP_DEFER_ACCEPT, as on every tls '
        "listener; relay does not apply to terminated connections)"
    )
    forward_description = (
        'Portway mode = "http-proxy", workers = 1, allow = ["127.0.0.1:ORIGIN_PORT"], connect_ports = '
        "[ORIGIN_PORT], no users_file, socks5 on (default), admin and access log off (keep-alive "
        "clients, origin connections pooled per worker, every request parsed by llhttp and routed)"
    )

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.description = f'Portway, workers = 1, relay = "{self.relay}"'
        self.sni_description = (
            'Portway mode = "sni", one [[listener.route]] match = "localhost", '
            f'workers = 1, relay = "{self.relay}" (TCP_DEFER_ACCEPT, as on every sni listener)'
        )
        self.gateway_description = (
            f'Portway mode = "tcp", backend = "origin", workers = 1, relay = "{self.relay}": the '
            "baseline of the gateway scenarios, clients connect with no handshake"
        )

    def unavailable(self) -> str | None:
        cmd = [*self.ctx.portway_cmd, "run", "--help"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(cmd)}` failed: {exc}"
        if out.returncode != 0:
            last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"`{' '.join(cmd)}` exited {out.returncode}: {last[0]}"
        return None

    def version(self) -> str:
        line = _first_line([*self.ctx.portway_cmd, "--version"])
        try:
            head = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except OSError:
            head = ""
        return f"{line} (git {head or 'unknown'})"

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        backend = textwrap.dedent(
            f"""\
            [[backend]]
            name = "origin"
            servers = [{{ address = "127.0.0.1:{upstream_port}" }}]
            """
        )
        if self.mode.kind == "sni":
            listener = f"""\
                mode = "sni"
                bind = "127.0.0.1:{listen_port}"
                max_connections = 100000
                relay = "{self.relay}"
                  [[listener.route]]
                  match = "{self.mode.server_name}"
                  backend = "origin"
                """
        elif self.mode.kind == "gateway" and self.gateway_handshake:
            keyring = rundir / "gw.keyring"
            keyring.write_text(f"{self.mode.keyring_line}\n")
            keyring.chmod(0o600)
            # source_limit: the benchmark is one source address; it must never be slowed (100,000
            # is the largest burst Portway accepts).
            listener = f"""\
                mode = "gateway"
                bind = "127.0.0.1:{listen_port}"
                keyring_file = "gw.keyring"
                allow = ["127.0.0.1:{upstream_port}"]
                handshake_timeout = "5s"
                max_pending = 100000
                source_limit = {{ rate = 1000000, burst = 100000 }}
                max_connections = 100000
                relay = "{self.relay}"
                """
            backend = ""  # the token names the destination
        elif self.mode.kind == "forward":
            # loopback destinations must be allowed explicitly; CONNECT only to the origin's port
            listener = f"""\
                mode = "http-proxy"
                bind = "127.0.0.1:{listen_port}"
                allow = ["127.0.0.1:{upstream_port}"]
                connect_ports = [{upstream_port}]
                max_connections = 100000
                relay = "{self.relay}"
                """
            backend = ""  # the clients name the destination
        elif self.mode.kind == "tls":
            listener = f"""\
                mode = "tls"
                bind = "127.0.0.1:{listen_port}"
                certificates = ["{self.mode.cert.pem}"]
                backend = "origin"
                max_connections = 100000
                """
        else:  # tcp, and gateway mode's baseline
            listener = f"""\
                mode = "tcp"
                bind = "127.0.0.1:{listen_port}"
                backend = "origin"
                max_connections = 100000
                relay = "{self.relay}"
                """
        path = rundir / "portway.toml"
        path.write_text(
            textwrap.dedent(
                """\
                workers = 1
                [admin]
                listen = "off"
                [log]
                access = "off"
                [defaults]
                idle_timeout = "1h"   # like the peers' timeout client/server and proxy_timeout
                keepalive = false     # like the peers (no tcpka / proxy_socket_keepalive off)
                [[listener]]
                name = "bench"
                """
            )
            + textwrap.dedent(listener)
            + backend
        )
        return path

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return [*self.ctx.portway_cmd, "run", "-c", str(config)]


class PortwayGateway(Portway):
    """Portway with a ``mode = "gateway"`` listener, in the gateway scenarios only: one v2 key
    (``gw.keyring``), tokens may lead to the upstream only, and a source limit that never slows the
    benchmark's single source address. Compared with ``portway``'s tcp listener."""

    name = "portway-gateway"
    modes = ("gateway",)
    gateway_handshake = True

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.gateway_description = (
            'Portway mode = "gateway", keyring_file = "gw.keyring" (one v2 key), allow = '
            '["127.0.0.1:ORIGIN_PORT"], handshake_timeout = "5s", max_pending = 100000, source_limit = '
            f'{{ rate = 1000000, burst = 100000 }}, workers = 1, relay = "{self.relay}"'
        )
        self.description = self.gateway_description


class PortwayCopy(Portway):
    """Portway with ``relay = "copy"`` (no splice). No tls mode: terminated connections do not use
    the relay setting, so it would run the same as ``portway``."""

    name = "portway-copy"
    relay = "copy"
    modes = ("tcp", "sni")


# ------------------------------------------------------------------------------------ HAProxy


class HAProxy(Proxy):
    """HAProxy ``mode tcp``, ``nbthread 1``, without splice (see :class:`HAProxySplice`)."""

    name = "haproxy"
    splice = False
    tls_description = (
        "HAProxy mode tcp, nbthread 1, bind ssl crt site.pem (one self-signed P-256 certificate for "
        "localhost, chain + key) defer-accept, default_backend origin, no splice"
    )
    #: Pipes HAProxy may keep for splicing (each costs 2 fds; default would be maxconn / 4).
    MAXPIPES = 64

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        splice = ", option splice-request + splice-response" if self.splice else ", no splice"
        self.description = "HAProxy mode tcp, nbthread 1" + splice
        self.sni_description = (
            "HAProxy mode tcp, nbthread 1, bind defer-accept, tcp-request inspect-delay 5s + content "
            "accept if { req_ssl_hello_type 1 }, use_backend if { req.ssl_sni -i localhost }" + splice
        )

    def unavailable(self) -> str | None:
        return None if shutil.which("haproxy") else "haproxy not installed (run bench/setup.sh)"

    def version(self) -> str:
        return _first_line(["haproxy", "-v"])

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        maxconn = (self.ctx.fd_limit - 2 * self.MAXPIPES - 200) // 2
        splice = "    option splice-request\n    option splice-response\n" if self.splice else ""
        bind = f"127.0.0.1:{listen_port}"
        if self.mode.kind == "sni":
            bind += " defer-accept"
            route = f"""    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend origin if {{ req.ssl_sni -i {self.mode.server_name} }}
"""
        else:
            if self.mode.kind == "tls":
                bind += f" ssl crt {self.mode.cert.pem} defer-accept"  # as Portway's tls listener
            route = "    default_backend origin\n"
        path = rundir / "haproxy.cfg"
        path.write_text(
            f"""global
    nbthread 1
    maxconn {maxconn}
    maxpipes {self.MAXPIPES}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
{splice}
frontend bench
    bind {bind}
    maxconn {maxconn}
{route}
backend origin
    server s1 127.0.0.1:{upstream_port}
"""
        )
        return path

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return ["haproxy", "-db", "-f", str(config)]


class HAProxySplice(HAProxy):
    """HAProxy with forced splice both ways.

    ``option splice-auto`` never splices on loopback (see DESIGN.md), so this variant forces it with
    ``option splice-request`` + ``option splice-response``. No tls mode: there is nothing to splice
    once HAProxy decrypts, so it would run the same as ``haproxy``.
    """

    name = "haproxy-splice"
    splice = True
    modes = ("tcp", "sni")


# ------------------------------------------------------------------------------------ nginx

NGINX_MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"))


def nginx_stream_module() -> Path | None:
    """The dynamic stream module, if nginx was built with ``--with-stream=dynamic``."""
    for d in NGINX_MODULE_DIRS:
        candidate = d / "ngx_stream_module.so"
        if candidate.exists():
            return candidate
    return None


def nginx_common(rundir: Path, worker_connections: int, fd_limit: int) -> str:
    """The main-context part shared by the nginx proxy and the nginx origin."""
    return f"""worker_processes 1;
worker_rlimit_nofile {fd_limit};
daemon off;
master_process on;
pid {rundir}/nginx.pid;
error_log {rundir}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
"""


class Nginx(Proxy):
    """nginx ``stream`` proxy, ``worker_processes 1`` (master + one worker)."""

    name = "nginx"
    description = "nginx stream proxy_pass, worker_processes 1"
    sni_description = (
        "nginx stream ssl_preread on, map $ssl_preread_server_name → proxy_pass $up, worker_processes 1 "
        "(its stream listen has no deferred option)"
    )
    tls_description = (
        "nginx stream listen ssl, ssl_certificate + ssl_certificate_key (one self-signed P-256 "
        "certificate for localhost), ssl_protocols TLSv1.2 TLSv1.3 (nginx < 1.23.4 would stop at 1.2), "
        "proxy_pass origin, worker_processes 1"
    )

    def unavailable(self) -> str | None:
        if not shutil.which("nginx"):
            return "nginx not installed (run bench/setup.sh)"
        if nginx_stream_module() is None and "--with-stream " not in _nginx_configure_args():
            return "nginx stream module missing (apt-get install libnginx-mod-stream; see bench/setup.sh)"
        return None

    def version(self) -> str:
        return _first_line(["nginx", "-v"])

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        module = nginx_stream_module()
        load = f"load_module {module};\n" if module else ""
        listen = f"127.0.0.1:{listen_port}"
        route_map = ""
        route = f"        proxy_pass 127.0.0.1:{upstream_port};\n"
        if self.mode.kind == "sni":
            route_map = f"""    map $ssl_preread_server_name $up {{
        {self.mode.server_name} 127.0.0.1:{upstream_port};
    }}
"""
            route = "        ssl_preread on;\n        proxy_pass $up;\n"
        elif self.mode.kind == "tls":
            cert = self.mode.cert
            listen += " ssl"
            route = (
                f"        ssl_certificate {cert.cert};\n"
                f"        ssl_certificate_key {cert.key};\n"
                "        ssl_protocols TLSv1.2 TLSv1.3;  # nginx < 1.23.4 would stop at TLS 1.2 by default\n"
            ) + route
        path = rundir / "nginx.conf"
        path.write_text(
            load
            + nginx_common(rundir, self.ctx.fd_limit - 100, self.ctx.fd_limit)
            + f"""stream {{
{route_map}    server {{
        listen {listen};
{route}        proxy_timeout 1h;
    }}
}}
"""
        )
        return path

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return ["nginx", "-p", f"{rundir}/", "-e", str(rundir / "error.log"), "-c", str(config)]


def _nginx_configure_args() -> str:
    try:
        out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return out.stderr + " "


# ------------------------------------------------------------------------------------ sniproxy


class Sniproxy(Proxy):
    """sniproxy (dlundquist), one process (libev loop), TLS listener with one table entry.

    sniproxy only proxies TLS (by SNI) and HTTP (by Host), so it runs in the sni scenarios only.
    ``-f`` keeps it in the foreground without dropping privileges.
    """

    name = "sniproxy"
    description = "sniproxy, sni scenarios only"
    sni_description = "sniproxy listener proto tls, table ^localhost$ → origin, one process (-f)"
    modes = ("sni",)

    def unavailable(self) -> str | None:
        return None if shutil.which("sniproxy") else "sniproxy not installed (run bench/setup.sh)"

    def version(self) -> str:
        return _first_line(["sniproxy", "-V"])

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        name = self.mode.server_name
        assert name is not None  # start() lets only sni mode through
        pattern = "^" + re.escape(name) + "$"  # table entries are regular expressions
        path = rundir / "sniproxy.conf"
        path.write_text(
            f"""pidfile {rundir}/sniproxy.pid

error_log {{
    filename {rundir}/error.log
    priority warning
}}

listener 127.0.0.1:{listen_port} {{
    protocol tls
    table bench
}}

table bench {{
    {pattern} 127.0.0.1:{upstream_port}
}}
"""
        )
        return path

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return ["sniproxy", "-f", "-n", str(self.ctx.fd_limit), "-c", str(config)]


# ------------------------------------------------------------------------------------ forward proxies

#: The separate venv of the Python forward proxies (proxy.py, pproxy, mitmproxy): bench/setup.sh
#: makes it, so that Portway's own venv stays clean.
PEERS_VENV = Path(__file__).resolve().parent / ".peers-venv"


class ForwardProxy(Proxy):
    """A forward-proxy peer: the forward scenarios only."""

    modes = ("forward",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.description = self.forward_description


class Squid(ForwardProxy):
    """squid, one process (``-N``: no daemon, no kid processes), no cache, no access log.

    As root, squid drops to its ``cache_effective_user`` (Debian's ``proxy``), so the run directory
    is made writable for its cache log.
    """

    name = "squid"
    forward_description = (
        "squid -N (one process, workers 1), http_access allow from 127.0.0.1 only, Safe_ports = "
        "SSL_ports = the origin's port (deny !Safe_ports, deny CONNECT !SSL_ports), cache deny all, "
        "cache_mem 0, access_log none, pinger_enable off, other settings default (so it keeps idle "
        "server connections to the origin for reuse: server_persistent_connections on)"
    )

    def unavailable(self) -> str | None:
        return None if shutil.which("squid") else "squid not installed (run bench/setup.sh)"

    def version(self) -> str:
        return _first_line(["squid", "-v"])

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        rundir.chmod(0o777)  # squid writes its cache log as the proxy user
        path = rundir / "squid.conf"
        path.write_text(
            f"""http_port 127.0.0.1:{listen_port}
workers 1
acl bench_client src 127.0.0.1/32
acl Safe_ports port {upstream_port}
acl SSL_ports port {upstream_port}
acl CONNECT method CONNECT
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow bench_client
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {rundir}/cache.log
pid_filename {rundir}/squid.pid
coredump_dir {rundir}
pinger_enable off
max_filedescriptors {self.ctx.fd_limit}
shutdown_lifetime 0 seconds
"""
        )
        return path

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return ["squid", "-N", "-f", str(config)]


class Tinyproxy(ForwardProxy):
    """tinyproxy in the foreground (``-d``): one process, a thread per client."""

    name = "tinyproxy"
    forward_description = (
        "tinyproxy -d (one process, a thread per client), MaxClients 10000, Allow 127.0.0.1, "
        "ConnectPort ORIGIN_PORT, LogLevel Warning, Timeout 3600"
    )

    def unavailable(self) -> str | None:
        return None if shutil.which("tinyproxy") else "tinyproxy not installed (run bench/setup.sh)"

    def version(self) -> str:
        return _first_line(["tinyproxy", "-v"])

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        path = rundir / "tinyproxy.conf"
        path.write_text(
            f"""Port {listen_port}
Listen 127.0.0.1
Timeout 3600
MaxClients 10000
Allow 127.0.0.1
ConnectPort {upstream_port}
LogLevel Warning
LogFile "{rundir}/tinyproxy.log"
PidFile "{rundir}/tinyproxy.pid"
"""
        )
        return path

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return ["tinyproxy", "-d", "-c", str(config)]


class PeerVenvProxy(ForwardProxy):
    """A Python forward proxy installed in :data:`PEERS_VENV` (``tool`` is its script there)."""

    tool = ""
    package = ""
    listen_port = 0

    @property
    def script(self) -> Path:
        return PEERS_VENV / "bin" / self.tool

    def unavailable(self) -> str | None:
        if not os.access(self.script, os.X_OK):
            return (
                f"{self.script} missing: {self.package} is installed in bench/.peers-venv by bench/setup.sh"
            )
        return None

    def version(self) -> str:
        try:
            meta = subprocess.run(
                [str(PEERS_VENV / "bin" / "pip"), "show", self.package],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{self.package} unknown ({exc})"
        versions = [
            line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Version:")
        ]
        python = _first_line([str(PEERS_VENV / "bin" / "python"), "-V"])
        return f"{self.package} {versions[0] if versions else 'unknown'} ({python})"

    def write_config(self, listen_port: int, upstream_port: int, rundir: Path) -> Path:
        self.listen_port = listen_port  # command-line options only: argv() uses it
        return rundir


class ProxyPy(PeerVenvProxy):
    """proxy.py (abhinavsingh), one acceptor and one worker process, its default plugins."""

    name = "proxy.py"
    tool = "proxy"
    package = "proxy.py"
    forward_description = (
        "proxy --hostname 127.0.0.1 --port P --num-workers 1 --num-acceptors 1 --log-level WARNING "
        "(default plugins; WARNING: no per-request log line, as the others' access logs are off)"
    )

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return [
            str(self.script),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(self.listen_port),
            "--num-workers",
            "1",
            "--num-acceptors",
            "1",
            "--log-level",
            "WARNING",
            "--pid-file",
            str(rundir / "proxy.pid"),
        ]


class Pproxy(PeerVenvProxy):
    """pproxy (asyncio), one process, an HTTP listener (which also serves CONNECT)."""

    name = "pproxy"
    tool = "pproxy"
    package = "pproxy"
    forward_description = "pproxy -l http://127.0.0.1:P (one process, asyncio, defaults)"

    def argv(self, config: Path, rundir: Path) -> list[str]:
        return [str(self.script), "-l", f"http://127.0.0.1:{self.listen_port}"]


class Mitmdump(PeerVenvProxy):
    """mitmdump (mitmproxy without a UI), regular (forward) mode, quiet, default options."""

    name = "mitmdump"
    tool = "mitmdump"
    package = "mitmproxy"
    forward_description = (
        "mitmdump --listen-host 127.0.0.1 -p P -q (regular mode, default options; its CA is made once "
        "per run in the work directory's confdir). Inside CONNECT it sees plain HTTP, not TLS, and "
        "proxies it as HTTP"
    )

    def argv(self, config: Path, rundir: Path) -> list[str]:
        confdir = self.ctx.workdir / "mitmproxy-confdir"  # the CA is generated on first start
        return [
            str(self.script),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(self.listen_port),
            "-q",
            "--set",
            f"confdir={confdir}",
        ]


#: Every known proxy, in report order.
PROXY_CLASSES: list[type[Proxy]] = [
    Portway,
    PortwayGateway,
    PortwayCopy,
    HAProxy,
    HAProxySplice,
    Nginx,
    Sniproxy,
    Squid,
    Tinyproxy,
    ProxyPy,
    Pproxy,
    Mitmdump,
]


def make_proxies(ctx: Context) -> dict[str, Proxy]:
    """Every known proxy, by name, in report order."""
    return {cls.name: cls(ctx) for cls in PROXY_CLASSES}
