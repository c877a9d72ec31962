"""One generation of configuration made live in a worker: backend pools and their health checks.

A :class:`Runtime` is built from a :class:`~portway.config.model.Config` on start and on every
reload. Connections accepted under it keep using it until they end, so a reload never touches
live connections; the worker only points *new* connections at the new runtime. Server health
is carried from the previous runtime for servers that are still configured the same way, so a
server that was down stays down across a reload. So is an interception CA whose certificate is
unchanged (with its cache of minted leaves), and with it the hosts remembered as refusing its
certificates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable

from portway.config.keys import GatewayKeys, load_gateway_keys
from portway.config.model import BackendSpec, Config, HealthCheck, InterceptSpec, ListenerSpec, RouteSpec
from portway.net import mitmca, tlsctx
from portway.proto import gateway
from portway.route.auth import Credentials
from portway.route.backend import Pool, Server, ServerHealth
from portway.route.destpolicy import DestPolicy
from portway.route.intercept import Interception
from portway.route.match import NameMatcher, Networks
from portway.route.table import Route, RouteTable

log = logging.getLogger("portway.health")

#: Called when a server goes up or down: (backend, server, up, why).
StateCallback = Callable[[str, Server, bool, str], None]


class Runtime:
    """Pools for every backend of one config generation, plus their active health checks."""

    def __init__(self, config: Config, generation: int, previous: Runtime | None = None) -> None:
        self.config = config
        self.generation = generation
        self.pools: dict[str, Pool] = {}
        self.backends: dict[str, BackendSpec] = {}
        self._tasks: list[asyncio.Task[None]] = []
        for spec in config.backends.values():
            self.backends[spec.name] = spec
            servers = []
            for s in spec.servers:
                health = ServerHealth(
                    rise=spec.health_check.rise if spec.health_check else 2,
                    fall=spec.health_check.fall if spec.health_check else 3,
                    eject_failures=spec.eject.failures,
                    eject_cooldown=spec.eject.cooldown,
                )
                old = previous.find_server(spec.name, s.name) if previous else None
                if old is not None and (old.host, old.port) == (s.host, s.port):
                    health.checked_up = old.health.checked_up
                    health.ejected_until = old.health.ejected_until
                servers.append(
                    Server(s.name, s.host, s.port, weight=s.weight, backup=s.backup, health=health)
                )
            self.pools[spec.name] = Pool(spec.name, servers, spec.balance)
        #: TLS client context of each backend with ``tls``, by backend name.
        self.backend_tls: dict[str, ssl.SSLContext] = {
            spec.name: tlsctx.client_context(spec.tls.ca, spec.tls.verify)
            for spec in config.backends.values()
            if spec.tls is not None
        }
        #: Certificates of each listener that terminates TLS, by listener name; read from
        #: the files anew for every generation, which is how a reload picks up new ones.
        self.certs: dict[str, tlsctx.CertStore] = {
            listener.name: _cert_store(listener) for listener in config.listeners if listener.tls
        }
        #: Keys and destination policy of each gateway listener, by listener name; the keys are
        #: read anew for every generation, which is how they are rotated.
        self.gateway_keys: dict[str, GatewayKeys] = {}
        self.gateway_policies: dict[str, DestPolicy] = {}
        #: Tokens that passed, by listener: token -> (version, address, not before, expires).
        self.gateway_tokens: dict[str, dict[bytes, tuple[int, gateway.Address, float, float]]] = {}
        for listener in config.listeners:
            if listener.gateway is not None:
                self.gateway_keys[listener.name] = load_gateway_keys(listener.gateway)
                self.gateway_policies[listener.name] = DestPolicy.parse(listener.gateway.allow)
                self.gateway_tokens[listener.name] = {}
        #: Route table of each listener that routes (sni), by listener name.
        self.tables: dict[str, RouteTable] = {}
        #: Destination policy of each dial-by-name route, by (listener, route); an http-proxy
        #: listener's own policy is at (listener, "").
        self.policies: dict[tuple[str, str], DestPolicy] = {}
        #: Users of each http-proxy listener with a users_file, by listener name.
        self.users: dict[str, Credentials] = {}
        #: TLS interception of each http-proxy listener whose ``intercept`` is non-empty, by
        #: listener name; a listener that is absent intercepts nothing. Listeners naming the same
        #: CA directory share one CA object (and its leaf cache).
        self.intercepts: dict[str, Interception] = {}
        cas: dict[str, mitmca.CertificateAuthority] = {}
        origins: dict[str | None, ssl.SSLContext] = {}
        for listener in config.listeners:
            proxy = listener.http_proxy
            if proxy is not None:
                self.policies[(listener.name, "")] = DestPolicy.parse(proxy.allow, deny=proxy.deny)
                if proxy.users_file is not None:
                    self.users[listener.name] = Credentials.load(proxy.users_file)
                if proxy.intercept is not None:
                    self.intercepts[listener.name] = _interception(
                        listener.name, proxy.intercept, previous, cas, origins
                    )
        for listener in config.listeners:
            if listener.routes:
                self.tables[listener.name] = RouteTable(
                    [self._route(listener.name, r) for r in listener.routes]
                )

    def _route(self, listener: str, r: RouteSpec) -> Route:
        if r.dial is not None:
            self.policies[(listener, r.name)] = DestPolicy.parse(r.allow)
        return Route(
            name=r.name,
            match=NameMatcher.parse(r.match) if r.match is not None else None,
            alpn=frozenset(r.alpn),
            networks=Networks.parse(r.clients) if r.clients else None,
            backend=r.backend,
            dial=r.dial,
            action=r.action,
            offer_alpn=r.offer_alpn,
        )

    def find_server(self, backend: str, name: str) -> Server | None:
        """The server called ``name`` in ``backend``, if configured."""
        pool = self.pools.get(backend)
        if pool is None:
            return None
        for server in pool.servers:
            if server.name == name:
                return server
        return None

    async def resolve(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        """Resolve every server's host to a socket address; returns warnings for failures.

        A server whose name does not resolve stays configured with no address: dialling it
        fails over to the next server, and it is retried at the next reload.
        """
        problems: list[str] = []
        for pool in self.pools.values():
            for server in pool.servers:
                try:
                    infos = await loop.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    problems.append(
                        f"backend {pool.name}: server {server.name}: cannot resolve {server.host!r}: {exc}"
                    )
                    continue
                server.sockaddr = infos[0][4]
        return problems

    def start_health_checks(self, loop: asyncio.AbstractEventLoop, on_change: StateCallback) -> None:
        """Start one checking task per backend that has ``health_check`` configured."""
        for name, spec in self.backends.items():
            if spec.health_check is not None:
                task = loop.create_task(self._check_loop(self.pools[name], spec.health_check, on_change))
                self._tasks.append(task)

    def stop_health_checks(self) -> None:
        """Cancel this generation's health-check tasks (after a reload or at exit)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def _check_loop(self, pool: Pool, hc: HealthCheck, on_change: StateCallback) -> None:
        loop = asyncio.get_running_loop()
        while True:
            results = await asyncio.gather(*(_tcp_check(loop, s, hc.timeout) for s in pool.servers))
            for server, why in zip(pool.servers, results, strict=True):
                change = server.health.record_check(why == "")
                if change is not None:
                    up = change == "up"
                    detail = f"{hc.rise} checks passed" if up else f"{hc.fall} checks failed: {why}"
                    on_change(pool.name, server, up, detail)
            await asyncio.sleep(hc.interval)


def _cert_store(listener: ListenerSpec) -> tlsctx.CertStore:
    """Load a listener's certificates (already checked by the config loader) and build the
    context of each for every ALPN offer its terminating routes make."""
    spec = listener.tls
    assert spec is not None
    certs = [tlsctx.load(c.cert, c.key, min_version=spec.min_version) for c in spec.certificates]
    store = tlsctx.CertStore(certs)
    store.prepare({route.offer_alpn for route in listener.routes if route.action == "terminate"})
    return store


def _interception(
    name: str,
    spec: InterceptSpec,
    previous: Runtime | None,
    cas: dict[str, mitmca.CertificateAuthority],
    origins: dict[str | None, ssl.SSLContext],
) -> Interception:
    """The interception of listener ``name``: its CA (from ``cas``, else the previous generation's
    if its certificate is unchanged, else read from the directory), its origin context (shared
    through ``origins``), and the previous generation's pinned hosts when the CA is the same."""
    ca = cas.get(spec.ca)
    if ca is None:
        ca = _previous_ca(spec.ca, previous) or mitmca.CertificateAuthority.load(spec.ca)
        cas[spec.ca] = ca
    origin = origins.get(spec.origin_ca)
    if origin is None:
        origin = origins[spec.origin_ca] = _origin_context(spec.origin_ca)
    interception = Interception(
        spec.patterns, ca, origin, har=spec.har, pinning=spec.pinning, pinning_ttl=spec.pinning_ttl
    )
    old = previous.intercepts.get(name) if previous is not None else None
    if old is not None and old.ca is ca:
        interception.inherit(old)
    return interception


def _previous_ca(directory: str, previous: Runtime | None) -> mitmca.CertificateAuthority | None:
    """The previous generation's CA for ``directory`` if ``ca.pem`` there is still its certificate
    (the loader has just checked that the directory's CA loads, key included)."""
    if previous is None:
        return None
    for old in previous.intercepts.values():
        if old.ca.directory == os.path.abspath(directory):
            try:
                current = mitmca.read_certificate(directory)
            except mitmca.CAError:
                return None
            return old.ca if current == old.ca.certificate else None
    return None


def _origin_context(extra_ca: str | None) -> ssl.SSLContext:
    """The client context for TLS to an intercepted tunnel's origin: the system's trust store plus
    the CAs in ``extra_ca`` (a PEM file, already checked by the loader), chain and name verified,
    TLS 1.2+, ALPN ``http/1.1`` (the HTTP spoken inside)."""
    context = tlsctx.client_context(None, verify=True)
    if extra_ca is not None:
        context.load_verify_locations(cafile=extra_ca)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _tcp_check(loop: asyncio.AbstractEventLoop, server: Server, timeout: float) -> str:
    """Connect and close; '' when the server accepted, else why not."""
    sockaddr = server.sockaddr
    if sockaddr is None:
        return "name did not resolve"
    family = socket.AF_INET6 if len(sockaddr) == 4 else socket.AF_INET  # type: ignore[arg-type]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout)  # type: ignore[arg-type]
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    finally:
        sock.close()
    return ""
