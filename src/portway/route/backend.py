"""Backend pools: servers, their health state and the balancing policies that pick one.

Strategy:

Rule 1. Everything here is pure. There are no sockets, no asyncio and no clocks: every
        method that depends on time takes ``now`` (monotonic seconds) from the caller.
        The I/O layer (``net/dial.py``) runs the checks, dials, and reports results back
        through :meth:`ServerHealth.record_check` and :meth:`ServerHealth.record_connect`.
Rule 2. A server is a *candidate* for one :meth:`Pool.pick` when its weight is positive,
        it is not in ``exclude`` (the servers already tried by this connection) and
        ``health.is_up(now)``. Non-backup servers come first; backup servers are
        considered only when no non-backup candidate remains, so a retry that has
        excluded every primary falls through to a backup.
Rule 3. ``pick`` never changes a server's connection counters: the caller calls
        :meth:`Server.acquire` when it hands a connection to the server and
        :meth:`Server.release` when that connection ends.
Rule 4. ``pick`` is on the per-connection hot path. It allocates nothing per call
        (apart from hashing the client address for ``source``) and is a single pass
        over the pool, plus a binary search of the hash ring for ``source``.
Rule 5. The ``source`` ring is built once, from server names and a stable hash
        (BLAKE2b), so every worker process, and every reload with the same server
        names, maps a client to the same server. Servers are fixed for the life of a
        :class:`Pool`; a configuration reload builds a new one.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence
from typing import Final

__all__ = ["BALANCE_POLICIES", "VNODES_PER_WEIGHT", "Pool", "Server", "ServerHealth"]

BALANCE_POLICIES: Final = frozenset({"roundrobin", "leastconn", "random", "source"})
"""The accepted values of :attr:`Pool.balance`."""
_PICKERS: Final = {p: f"_pick_{p}" for p in BALANCE_POLICIES}

VNODES_PER_WEIGHT: Final = 160
"""Points a server gets on the ``source`` hash ring for each unit of weight."""

_RING_WALK_LIMIT: Final = 32
"""Ring points walked before switching to the per-server search (see :meth:`_Ring.lookup`)."""


class ServerHealth:
    """Up/down state from active checks (rise/fall) and passive ejection.

    Two independent signals decide whether a server may receive connections:

    * Active checks. The server is ``checked_up`` from the start. It goes down after
      ``fall`` consecutive failed checks while up, and comes back up after ``rise``
      consecutive successful checks while down (HAProxy's ``rise``/``fall``).
    * Passive ejection. ``eject_failures`` consecutive failed connection attempts eject
      the server until ``now + eject_cooldown``. A successful attempt resets the count.
      ``eject_failures == 0`` disables ejection.

    The server is up (:meth:`is_up`) when it is checked up and not currently ejected.
    """

    __slots__ = (
        "_check_streak",
        "_connect_failures",
        "checked_up",
        "eject_cooldown",
        "eject_failures",
        "ejected_until",
        "fall",
        "rise",
    )

    rise: int
    """Consecutive successful checks that bring a down server back up."""
    fall: int
    """Consecutive failed checks that take an up server down."""
    eject_failures: int
    """Consecutive failed connection attempts that eject the server; 0 disables ejection."""
    eject_cooldown: float
    """Seconds an ejected server stays out of rotation."""
    checked_up: bool
    """The state decided by active checks alone."""
    ejected_until: float
    """Monotonic time until which the server is ejected; ``-inf`` if it never was."""

    def __init__(
        self, *, rise: int = 2, fall: int = 3, eject_failures: int = 3, eject_cooldown: float = 10.0
    ) -> None:
        """Create a health state that starts up and not ejected.

        Raises:
            ValueError: if ``rise`` or ``fall`` is below 1, ``eject_failures`` is
                negative, or ``eject_cooldown`` is negative.
        """
        if rise < 1:
            raise ValueError(f"rise: expected an integer >= 1, got {rise!r}")
        if fall < 1:
            raise ValueError(f"fall: expected an integer >= 1, got {fall!r}")
        if eject_failures < 0:
            raise ValueError(f"eject_failures: expected an integer >= 0, got {eject_failures!r}")
        if eject_cooldown < 0:
            raise ValueError(f"eject_cooldown: expected seconds >= 0, got {eject_cooldown!r}")
        self.rise = rise
        self.fall = fall
        self.eject_failures = eject_failures
        self.eject_cooldown = eject_cooldown
        self.checked_up = True
        self.ejected_until = float("-inf")
        # Consecutive results that argue for flipping ``checked_up``: failures while up,
        # successes while down. Reset by any result that agrees with the current state.
        self._check_streak = 0
        self._connect_failures = 0

    def record_check(self, ok: bool) -> str | None:
        """Record one active health check result.

        Returns:
            ``"down"`` when this failure is the ``fall``-th in a row while up,
            ``"up"`` when this success is the ``rise``-th in a row while down,
            otherwise ``None``.
        """
        if ok == self.checked_up:
            self._check_streak = 0
            return None
        self._check_streak += 1
        if self._check_streak < (self.rise if ok else self.fall):
            return None
        self._check_streak = 0
        self.checked_up = ok
        return "up" if ok else "down"

    def record_connect(self, ok: bool, now: float) -> str | None:
        """Record the outcome of a real connection attempt made at ``now``.

        A success resets the consecutive failure count. The ``eject_failures``-th
        failure in a row ejects the server until ``now + eject_cooldown`` and restarts
        the count, so another ``eject_failures`` failures are needed to eject it again.

        Returns:
            ``"ejected"`` when this failure ejects the server, otherwise ``None``.
        """
        if ok:
            self._connect_failures = 0
            return None
        if self.eject_failures == 0:
            return None
        self._connect_failures += 1
        if self._connect_failures < self.eject_failures:
            return None
        self._connect_failures = 0
        self.ejected_until = now + self.eject_cooldown
        return "ejected"

    def is_up(self, now: float) -> bool:
        """Whether the server may receive connections at ``now``: checked up and not ejected."""
        return self.checked_up and now >= self.ejected_until

    def __repr__(self) -> str:
        """A debugging representation with the current state."""
        return (
            f"ServerHealth(checked_up={self.checked_up}, ejected_until={self.ejected_until}, "
            f"rise={self.rise}, fall={self.fall}, eject_failures={self.eject_failures}, "
            f"eject_cooldown={self.eject_cooldown})"
        )


class Server:
    """One server of a backend: where to connect, its weight, and its live state.

    Servers compare by identity, so ``exclude`` sets and lists hold the very objects
    that :meth:`Pool.pick` returned.
    """

    __slots__ = ("active", "backup", "health", "host", "name", "port", "sockaddr", "total", "weight")

    name: str
    """The server's name, unique within its pool; also its identity on the ``source`` ring."""
    host: str
    """A host name or an IP literal (IPv6 without brackets)."""
    port: int
    """The TCP port."""
    weight: int
    """Relative share of connections; 0 takes the server out of rotation."""
    backup: bool
    """Used only when no non-backup server is a candidate."""
    health: ServerHealth
    """Check and ejection state."""
    active: int
    """Live connections, maintained by callers via :meth:`acquire` and :meth:`release`."""
    total: int
    """Connections ever handed to this server."""
    sockaddr: object | None
    """The resolved socket address, filled in by the I/O layer; stored, never read here."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        weight: int = 1,
        backup: bool = False,
        health: ServerHealth | None = None,
    ) -> None:
        """Create a server with no connections and, unless given, a default :class:`ServerHealth`.

        Raises:
            ValueError: if ``port`` is outside 0..65535 or ``weight`` is negative.
        """
        if not 0 <= port <= 65535:
            raise ValueError(f"server {name!r}: port: expected 0..65535, got {port!r}")
        if weight < 0:
            raise ValueError(f"server {name!r}: weight: expected an integer >= 0, got {weight!r}")
        self.name = name
        self.host = host
        self.port = port
        self.weight = weight
        self.backup = backup
        self.health = ServerHealth() if health is None else health
        self.active = 0
        self.total = 0
        self.sockaddr = None

    def acquire(self) -> None:
        """Count a connection handed to this server (``active += 1``, ``total += 1``)."""
        self.active += 1
        self.total += 1

    def release(self) -> None:
        """Count the end of a connection previously counted by :meth:`acquire`."""
        self.active -= 1

    @property
    def address(self) -> str:
        """``host:port``, with the host in brackets when it is an IPv6 literal (``[::1]:80``)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            return f"[{host}]:{self.port}"
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        """A debugging representation: name, address, weight, backup and connection counts."""
        backup = ", backup" if self.backup else ""
        return (
            f"Server({self.name!r}, {self.address}, weight={self.weight}{backup}, "
            f"active={self.active}, total={self.total})"
        )


def _hash64(data: bytes) -> int:
    """A 64-bit hash that is the same in every process and on every platform."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _eligible(server: Server, now: float, exclude: Collection[Server]) -> bool:
    """Whether ``server`` is a candidate for a pick (Rule 2), tier aside."""
    return server.weight > 0 and server.health.is_up(now) and server not in exclude


def _client_key(client_ip: str) -> bytes:
    """The bytes hashed for ``source``: the IP, with IPv4-mapped IPv6 reduced to IPv4.

    ``::ffff:192.0.2.1`` (what a dual-stack socket reports for an IPv4 client) and
    ``192.0.2.1`` must reach the same server.
    """
    if client_ip[:7].lower() == "::ffff:" and "." in client_ip:
        client_ip = client_ip[7:]
    return client_ip.encode()


class _Ring:
    """A consistent-hash ring over one tier of servers, built once.

    Each server with weight ``w > 0`` gets ``VNODES_PER_WEIGHT * w`` points, hashed from
    its name. A key belongs to the first point at or after its hash, wrapping around.
    """

    __slots__ = ("_keys", "_owners", "_per_server")

    def __init__(self, servers: Sequence[Server]) -> None:
        """Place every server of ``servers`` with a positive weight on the ring."""
        points: list[tuple[int, str, Server]] = []
        for server in servers:
            prefix = server.name.encode() + b"#"
            for v in range(VNODES_PER_WEIGHT * server.weight):
                points.append((_hash64(prefix + str(v).encode()), server.name, server))
        # Names are unique within a pool, so (hash, name) orders the ring the same way everywhere.
        points.sort(key=lambda p: (p[0], p[1]))
        self._keys = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        positions: dict[str, list[int]] = {}
        for i, p in enumerate(points):
            positions.setdefault(p[1], []).append(i)
        self._per_server = [(server, positions[server.name]) for server in servers if server.weight > 0]

    def lookup(self, key_hash: int, now: float, exclude: Collection[Server]) -> Server | None:
        """The first candidate clockwise from ``key_hash``, or ``None`` if the tier has none.

        Walks the ring point by point for up to ``_RING_WALK_LIMIT`` points. If that is
        not enough (many servers down or excluded), it finds, for each candidate, its
        first point from the start position and takes the nearest: the same answer as
        walking on, in O(servers × log points) instead of O(points).
        """
        owners = self._owners
        size = len(owners)
        if size == 0:
            return None
        start = bisect_left(self._keys, key_hash)
        if start == size:
            start = 0
        i = start
        for _ in range(min(size, _RING_WALK_LIMIT)):
            server = owners[i]
            if _eligible(server, now, exclude):
                return server
            i += 1
            if i == size:
                i = 0
        if size <= _RING_WALK_LIMIT:
            return None
        best: Server | None = None
        best_distance = size
        for server, positions in self._per_server:
            if not _eligible(server, now, exclude):
                continue
            j = bisect_left(positions, start)
            position = positions[j] if j < len(positions) else positions[0]
            distance = (position - start) % size
            if distance < best_distance:
                best, best_distance = server, distance
        return best


_SHARED_RNG = random.Random()
"""Drives the ``random`` policy of every pool not given its own: seeding a generator per pool
reads the OS entropy source, and a gateway or dial-by-name route makes a pool per connection."""


class Pool:
    """A backend: servers + a balancing policy.

    Policies (``balance``):

    * ``roundrobin``: smooth weighted round robin (nginx): shares follow the weights and
      picks interleave (weights 5, 1, 1 give ``a a b a c a a``).
    * ``leastconn``: the lowest ``active / weight``; ties rotate so equal servers share evenly.
    * ``random``: power of two choices: two distinct candidates drawn with probability
      proportional to weight, and the one with the lower ``active / weight`` wins.
    * ``source``: consistent hashing of the client IP, so a client keeps its server and
      losing a server moves only that server's clients.
    """

    __slots__ = (
        "_lc_start",
        "_pick_in",
        "_rings",
        "_rng",
        "_rr_current",
        "_tiers",
        "balance",
        "name",
        "servers",
    )

    name: str
    """The backend's name."""
    servers: tuple[Server, ...]
    """All servers, in configuration order."""
    balance: str
    """The balancing policy, one of :data:`BALANCE_POLICIES`."""

    @classmethod
    def single(cls, name: str, server: Server) -> Pool:
        """A pool of one server, made without the checks a configured backend needs: the
        modes that dial a destination the client chose (forward proxy, gateway, sni dial
        routes) make one per connection."""
        pool = cls.__new__(cls)
        pool.name = name
        pool.servers = (server,)
        pool.balance = "roundrobin"
        pool._tiers = ((0,), ())
        pool._rng = _SHARED_RNG
        pool._rr_current = [0]
        pool._lc_start = [0, 0]
        pool._rings = None
        pool._pick_in = pool._pick_roundrobin
        return pool

    def __init__(
        self,
        name: str,
        servers: Sequence[Server],
        balance: str = "roundrobin",
        *,
        rng: random.Random | None = None,
    ) -> None:
        """Create a pool; ``rng`` drives the ``random`` policy (tests pass a seeded one).

        Raises:
            ValueError: if ``balance`` is not one of :data:`BALANCE_POLICIES` or two
                servers share a name.
        """
        if balance not in BALANCE_POLICIES:
            expected = ", ".join(sorted(BALANCE_POLICIES))
            raise ValueError(f"backend {name!r}: balance: expected one of {expected}, got {balance!r}")
        seen: set[str] = set()
        for server in servers:
            if server.name in seen:
                raise ValueError(f"backend {name!r}: server name {server.name!r} is used twice")
            seen.add(server.name)
        self.name = name
        self.servers = tuple(servers)
        self.balance = balance
        primaries = tuple(i for i, s in enumerate(self.servers) if not s.backup)
        backups = tuple(i for i, s in enumerate(self.servers) if s.backup)
        # Tier 0 holds the primaries and tier 1 the backups, as indexes into ``servers``.
        self._tiers = (primaries, backups)
        self._rng = _SHARED_RNG if rng is None else rng
        self._rr_current = [0] * len(self.servers)
        self._lc_start = [0, 0]
        self._rings: tuple[_Ring, _Ring] | None = None
        if balance == "source":
            self._rings = (
                _Ring([self.servers[i] for i in primaries]),
                _Ring([self.servers[i] for i in backups]),
            )
        self._pick_in: Callable[[int, str, float, Collection[Server]], Server | None] = getattr(
            self, _PICKERS[balance]
        )

    def pick(self, client_ip: str, now: float, exclude: Collection[Server] = ()) -> Server | None:
        """Choose a server for a new connection from ``client_ip`` at ``now``.

        Args:
            client_ip: the client's IP address without the port (used by ``source``).
            now: monotonic seconds, for health and ejection.
            exclude: servers not to pick, typically those this connection already tried.

        Returns:
            A candidate (Rule 2 of the module docstring), or ``None`` if there is none.
            The caller must :meth:`Server.acquire` the server it uses.
        """
        server = self._pick_in(0, client_ip, now, exclude)
        if server is None and self._tiers[1]:
            server = self._pick_in(1, client_ip, now, exclude)
        return server

    def _pick_roundrobin(
        self, tier: int, client_ip: str, now: float, exclude: Collection[Server]
    ) -> Server | None:
        """Smooth weighted round robin (nginx): add each weight, take the largest, subtract the total."""
        servers = self.servers
        current = self._rr_current
        best = -1
        best_current = 0
        total = 0
        for i in self._tiers[tier]:
            server = servers[i]
            if not _eligible(server, now, exclude):
                continue
            weight = server.weight
            total += weight
            value = current[i] + weight
            current[i] = value
            if best < 0 or value > best_current:
                best, best_current = i, value
        if best < 0:
            return None
        current[best] -= total
        return servers[best]

    def _pick_leastconn(
        self, tier: int, client_ip: str, now: float, exclude: Collection[Server]
    ) -> Server | None:
        """The lowest ``active / weight``, scanning from a rotating start so ties take turns."""
        servers = self.servers
        indexes = self._tiers[tier]
        n = len(indexes)
        start = self._lc_start[tier]
        best: Server | None = None
        best_pos = 0
        for j in range(n):
            pos = start + j
            if pos >= n:
                pos -= n
            server = servers[indexes[pos]]
            if not _eligible(server, now, exclude):
                continue
            # active/weight < best.active/best.weight, without division (weights are > 0).
            if best is None or server.active * best.weight < best.active * server.weight:
                best, best_pos = server, pos
        if best is not None:
            self._lc_start[tier] = best_pos + 1 if best_pos + 1 < n else 0
        return best

    def _pick_random(
        self, tier: int, client_ip: str, now: float, exclude: Collection[Server]
    ) -> Server | None:
        """Power of two choices: draw two distinct candidates by weight, keep the less loaded."""
        servers = self.servers
        indexes = self._tiers[tier]
        total = 0
        count = 0
        only: Server | None = None
        for i in indexes:
            server = servers[i]
            if _eligible(server, now, exclude):
                total += server.weight
                count += 1
                only = server
        if count <= 1:
            return only
        first = self._draw(indexes, self._rng.random() * total, now, exclude, None)
        second = self._draw(indexes, self._rng.random() * (total - first.weight), now, exclude, first)
        if second.active * first.weight < first.active * second.weight:
            return second
        return first

    def _draw(
        self,
        indexes: tuple[int, ...],
        point: float,
        now: float,
        exclude: Collection[Server],
        skip: Server | None,
    ) -> Server:
        """The candidate whose cumulative-weight interval contains ``point``, ``skip`` left out."""
        servers = self.servers
        last: Server | None = None
        for i in indexes:
            server = servers[i]
            if server is skip or not _eligible(server, now, exclude):
                continue
            point -= server.weight
            last = server
            if point < 0:
                return server
        # Float rounding can leave ``point`` at exactly zero after the last candidate.
        assert last is not None, "_draw needs at least one candidate"
        return last

    def _pick_source(
        self, tier: int, client_ip: str, now: float, exclude: Collection[Server]
    ) -> Server | None:
        """Consistent hashing of the client IP; walks clockwise past servers that are not candidates."""
        assert self._rings is not None
        return self._rings[tier].lookup(_hash64(_client_key(client_ip)), now, exclude)

    def __repr__(self) -> str:
        """A debugging representation: name, policy and server names."""
        names = ", ".join(s.name for s in self.servers)
        return f"Pool({self.name!r}, balance={self.balance!r}, servers=[{names}])"
