"""Tests for portway.route.backend: health state, servers and balancing policies."""

from __future__ import annotations

import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.route.backend import (
    _RING_WALK_LIMIT,
    BALANCE_POLICIES,
    Pool,
    Server,
    ServerHealth,
    _client_key,
    _hash64,
)

POLICIES = sorted(BALANCE_POLICIES)


def servers(*weights: int, backup: Sequence[bool] = ()) -> list[Server]:
    """Servers named a, b, c, ... with the given weights (and backup flags)."""
    flags = list(backup) + [False] * (len(weights) - len(backup))
    return [
        Server(chr(ord("a") + i), f"10.0.0.{i + 1}", 8000 + i, weight=w, backup=flags[i])
        for i, w in enumerate(weights)
    ]


def random_ips(n: int, seed: int = 1) -> list[str]:
    """``n`` distinct pseudo-random IPv4 addresses, the same on every run."""
    rng = random.Random(seed)
    ips: set[str] = set()
    while len(ips) < n:
        ips.add(".".join(str(rng.randrange(256)) for _ in range(4)))
    return sorted(ips)


def down(server: Server) -> None:
    """Take a server down by active checks."""
    server.health.checked_up = False


# --- ServerHealth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rise", "fall", "checks", "expected"),
    [
        # fall=3: the third failure in a row takes it down, and only that one reports.
        (2, 3, [False, False, False], [None, None, "down"]),
        # a success in between restarts the count.
        (2, 3, [False, False, True, False, False, False], [None, None, None, None, None, "down"]),
        # once down, more failures report nothing.
        (2, 1, [False, False, False], ["down", None, None]),
        # rise=2: down, then the second success in a row brings it up.
        (2, 1, [False, True, True], ["down", None, "up"]),
        # a failure while down restarts the rise count.
        (2, 1, [False, True, False, True, True], ["down", None, None, None, "up"]),
        # successes while up report nothing.
        (1, 1, [True, True, False, True], [None, None, "down", "up"]),
        # rise=3, fall=2 full cycle.
        (
            3,
            2,
            [False, False, True, True, True, True],
            [None, "down", None, None, "up", None],
        ),
    ],
)
def test_health_checks_flip_exactly_at_thresholds(
    rise: int, fall: int, checks: list[bool], expected: list[str | None]
) -> None:
    health = ServerHealth(rise=rise, fall=fall)
    assert health.checked_up
    got = [health.record_check(ok) for ok in checks]
    assert got == expected
    up = True
    for result in got:
        if result is not None:
            up = result == "up"
    assert health.checked_up is up
    assert health.is_up(0.0) is up


def test_health_check_states_step_by_step() -> None:
    health = ServerHealth(rise=2, fall=3)
    assert health.record_check(False) is None and health.checked_up
    assert health.record_check(False) is None and health.checked_up
    assert health.record_check(False) == "down" and not health.checked_up
    assert health.record_check(True) is None and not health.checked_up
    assert health.record_check(True) == "up" and health.checked_up


def test_ejection_after_consecutive_connect_failures() -> None:
    health = ServerHealth(eject_failures=3, eject_cooldown=10.0)
    assert health.record_connect(False, 100.0) is None
    assert health.record_connect(False, 101.0) is None
    assert health.is_up(101.0)
    assert health.record_connect(False, 102.0) == "ejected"
    assert health.ejected_until == 112.0
    assert not health.is_up(102.0)
    assert not health.is_up(111.999)
    assert health.is_up(112.0)  # back after the cool-off
    assert health.checked_up  # ejection does not touch the checked state


def test_success_between_connect_failures_prevents_ejection() -> None:
    health = ServerHealth(eject_failures=3)
    results = [health.record_connect(ok, float(t)) for t, ok in enumerate([False, False, True, False, False])]
    assert results == [None] * 5
    assert health.is_up(5.0)
    assert health.record_connect(False, 6.0) == "ejected"


def test_ejection_count_restarts_after_ejection() -> None:
    health = ServerHealth(eject_failures=2, eject_cooldown=5.0)
    assert [health.record_connect(False, 0.0) for _ in range(2)] == [None, "ejected"]
    assert health.record_connect(False, 5.0) is None
    assert health.is_up(5.0)
    assert health.record_connect(False, 6.0) == "ejected"
    assert health.ejected_until == 11.0


def test_eject_failures_zero_disables_ejection() -> None:
    health = ServerHealth(eject_failures=0)
    assert all(health.record_connect(False, float(t)) is None for t in range(100))
    assert health.is_up(100.0)


def test_is_up_needs_checked_up_and_not_ejected() -> None:
    health = ServerHealth(fall=1, eject_failures=1, eject_cooldown=10.0)
    assert health.is_up(0.0)
    health.record_connect(False, 0.0)
    assert not health.is_up(5.0)
    health.record_check(False)
    assert not health.is_up(20.0)  # cool-off over, but checks say down
    health.record_check(True)
    health.record_check(True)
    assert health.is_up(20.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"rise": 0}, {"fall": 0}, {"eject_failures": -1}, {"eject_cooldown": -1.0}],
)
def test_health_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerHealth(**kwargs)


# --- Server -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [
        ("192.0.2.1", 80, "192.0.2.1:80"),
        ("web01.internal", 8080, "web01.internal:8080"),
        ("::1", 443, "[::1]:443"),
        ("2001:db8::10", 9000, "[2001:db8::10]:9000"),
        ("fe80::1%eth0", 22, "[fe80::1%eth0]:22"),
    ],
)
def test_server_address(host: str, port: int, address: str) -> None:
    assert Server("s", host, port).address == address


def test_server_counters_and_defaults() -> None:
    server = Server("s", "h", 1)
    assert (server.weight, server.backup, server.active, server.total, server.sockaddr) == (
        1,
        False,
        0,
        0,
        None,
    )
    assert server.health.is_up(0.0)
    server.acquire()
    server.acquire()
    server.release()
    assert (server.active, server.total) == (1, 2)
    server.sockaddr = ("192.0.2.1", 80)
    assert server.sockaddr == ("192.0.2.1", 80)


def test_servers_get_their_own_health() -> None:
    a, b = Server("a", "h", 1), Server("b", "h", 2)
    assert a.health is not b.health
    shared = ServerHealth()
    assert Server("c", "h", 3, health=shared).health is shared


@pytest.mark.parametrize(("port", "weight"), [(-1, 1), (65536, 1), (80, -1)])
def test_server_rejects_bad_parameters(port: int, weight: int) -> None:
    with pytest.raises(ValueError):
        Server("s", "h", port, weight=weight)


# --- Pool: construction and common pick rules -------------------------------------------------


def test_pool_rejects_unknown_balance() -> None:
    with pytest.raises(ValueError, match="balance"):
        Pool("web", servers(1), "first")


def test_pool_rejects_duplicate_server_names() -> None:
    with pytest.raises(ValueError, match="twice"):
        Pool("web", [Server("a", "h", 1), Server("a", "h", 2)])


@pytest.mark.parametrize("balance", POLICIES)
def test_empty_pool_picks_nothing(balance: str) -> None:
    assert Pool("web", [], balance).pick("192.0.2.1", 0.0) is None


@pytest.mark.parametrize("balance", POLICIES)
def test_pick_does_not_acquire(balance: str) -> None:
    pool = Pool("web", servers(1, 1), balance)
    for _ in range(10):
        pool.pick("192.0.2.1", 0.0)
    assert all(s.active == 0 and s.total == 0 for s in pool.servers)


@pytest.mark.parametrize("balance", POLICIES)
def test_weight_zero_and_down_servers_are_never_picked(balance: str) -> None:
    a, b, c = servers(0, 1, 1)
    down(c)
    pool = Pool("web", [a, b, c], balance, rng=random.Random(3))
    assert {pool.pick(ip, 0.0) for ip in random_ips(200)} == {b}


@pytest.mark.parametrize("balance", POLICIES)
def test_ejected_server_is_skipped_until_cooldown_ends(balance: str) -> None:
    a, b = servers(1, 1)
    a.health = ServerHealth(eject_failures=1, eject_cooldown=10.0)
    a.health.record_connect(False, 0.0)
    pool = Pool("web", [a, b], balance, rng=random.Random(3))
    assert {pool.pick(ip, 5.0) for ip in random_ips(100)} == {b}
    assert {pool.pick(ip, 10.0) for ip in random_ips(100)} == {a, b}


@pytest.mark.parametrize("balance", POLICIES)
def test_exclude_gives_a_different_server_for_retries(balance: str) -> None:
    pool = Pool("web", servers(1, 1, 1), balance, rng=random.Random(5))
    for ip in random_ips(50):
        tried: list[Server] = []
        for _ in range(3):
            server = pool.pick(ip, 0.0, tried)
            assert server is not None and server not in tried
            tried.append(server)
        assert pool.pick(ip, 0.0, tried) is None
        assert pool.pick(ip, 0.0, set(tried)) is None


@pytest.mark.parametrize("balance", POLICIES)
def test_backup_only_when_no_primary_is_up(balance: str) -> None:
    a, b, x, y = servers(1, 1, 1, 1, backup=[False, False, True, True])
    pool = Pool("web", [a, b, x, y], balance, rng=random.Random(7))
    ips = random_ips(200)
    assert {pool.pick(ip, 0.0) for ip in ips} == {a, b}
    down(a)
    assert {pool.pick(ip, 0.0) for ip in ips} == {b}
    down(b)
    assert {pool.pick(ip, 0.0) for ip in ips} == {x, y}
    down(x)
    down(y)
    assert {pool.pick(ip, 0.0) for ip in ips} == {None}


@pytest.mark.parametrize("balance", POLICIES)
def test_retry_falls_through_to_backup_when_primaries_are_excluded(balance: str) -> None:
    a, b, x = servers(1, 1, 1, backup=[False, False, True])
    pool = Pool("web", [a, b, x], balance)
    assert pool.pick("192.0.2.1", 0.0, [a]) is b
    assert pool.pick("192.0.2.1", 0.0, [a, b]) is x
    assert pool.pick("192.0.2.1", 0.0, [a, b, x]) is None
    down(b)
    assert pool.pick("192.0.2.1", 0.0, [a]) is x


@pytest.mark.parametrize("balance", POLICIES)
def test_weight_zero_primary_does_not_block_backups(balance: str) -> None:
    a, x = servers(0, 1, backup=[False, True])
    assert Pool("web", [a, x], balance).pick("192.0.2.1", 0.0) is x


# --- roundrobin -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "sequence"),
    [
        ((1, 1, 1), "abcabc"),
        ((5, 1, 1), "aabacaa" * 3),
        ((2, 1), "aba" * 3),
        ((3, 2), "ababa" * 2),
    ],
)
def test_roundrobin_interleaves_by_weight(weights: tuple[int, ...], sequence: str) -> None:
    pool = Pool("web", servers(*weights))
    picked = "".join(s.name for s in (pool.pick("", 0.0) for _ in sequence) if s is not None)
    assert picked == sequence


@pytest.mark.parametrize("weights", [(1, 1), (3, 2, 1), (10, 1, 4, 7), (100, 1)])
def test_roundrobin_shares_are_proportional_to_weight(weights: tuple[int, ...]) -> None:
    pool = Pool("web", servers(*weights))
    rounds = 7
    counts = Counter(pool.pick("", 0.0) for _ in range(rounds * sum(weights)))
    assert [counts[s] for s in pool.servers] == [rounds * w for w in weights]


def test_roundrobin_keeps_shares_with_a_server_excluded() -> None:
    a, b, c = pool_servers = servers(2, 1, 1)
    pool = Pool("web", pool_servers)
    counts = Counter(pool.pick("", 0.0, [c]) for _ in range(300))
    assert counts == {a: 200, b: 100}


# --- leastconn --------------------------------------------------------------------------------


def test_leastconn_picks_least_loaded() -> None:
    a, b, c = pool_servers = servers(1, 1, 1)
    pool = Pool("web", pool_servers, "leastconn")
    a.active, b.active, c.active = 5, 2, 7
    assert pool.pick("", 0.0) is b
    assert pool.pick("", 0.0, [b]) is a


def test_leastconn_spreads_equal_loads_evenly() -> None:
    pool = Pool("web", servers(1, 1, 1, 1), "leastconn")
    picked = [pool.pick("", 0.0) for _ in range(400)]
    assert Counter(picked) == dict.fromkeys(pool.servers, 100)
    assert picked[:4] == list(pool.servers)


def test_leastconn_spreads_evenly_around_an_excluded_server() -> None:
    a, b, c = pool_servers = servers(1, 1, 1)
    pool = Pool("web", pool_servers, "leastconn")
    assert Counter(pool.pick("", 0.0, [b]) for _ in range(100)) == {a: 50, c: 50}


def test_leastconn_with_acquire_balances_live_connections() -> None:
    pool = Pool("web", servers(1, 1, 1), "leastconn")
    for _ in range(30):
        server = pool.pick("", 0.0)
        assert server is not None
        server.acquire()
    assert [s.active for s in pool.servers] == [10, 10, 10]
    pool.servers[1].active = 4  # b's connections ended
    for _ in range(6):
        assert pool.pick("", 0.0) is pool.servers[1]
        pool.servers[1].acquire()


@pytest.mark.parametrize(
    ("weights", "active", "expected"),
    [
        ((2, 1), (3, 2), "a"),  # 1.5 < 2
        ((2, 1), (5, 2), "b"),  # 2.5 > 2
        ((1, 3), (1, 2), "b"),  # 0.67 < 1
        ((4, 1, 1), (8, 3, 1), "c"),  # 2, 3, 1
    ],
)
def test_leastconn_divides_by_weight(
    weights: tuple[int, ...], active: tuple[int, ...], expected: str
) -> None:
    pool = Pool("web", servers(*weights), "leastconn")
    for server, n in zip(pool.servers, active, strict=True):
        server.active = n
    picked = pool.pick("", 0.0)
    assert picked is not None and picked.name == expected


def test_leastconn_fills_in_proportion_to_weight() -> None:
    pool = Pool("web", servers(3, 1), "leastconn")
    for _ in range(400):
        server = pool.pick("", 0.0)
        assert server is not None
        server.acquire()
    assert [s.active for s in pool.servers] == [300, 100]


# --- random (power of two choices) ------------------------------------------------------------


def test_random_is_reproducible_with_a_seeded_rng() -> None:
    def run() -> list[str]:
        pool = Pool("web", servers(1, 2, 3), "random", rng=random.Random(42))
        return [s.name for s in (pool.pick("", 0.0) for _ in range(50)) if s is not None]

    assert run() == run()


def test_random_avoids_the_busiest_server() -> None:
    a, b, c, d = pool_servers = servers(1, 1, 1, 1)
    pool = Pool("web", pool_servers, "random", rng=random.Random(1))
    a.active, b.active, c.active, d.active = 50, 3, 4, 5
    counts = Counter(pool.pick("", 0.0) for _ in range(4000))
    # Two distinct draws: the busiest can never beat the other one.
    assert counts[a] == 0
    # b wins whenever it is drawn (half the draws); d only against a (1/6).
    assert counts[b] > counts[c] > counts[d] > 0
    assert counts[b] == pytest.approx(2000, rel=0.1)
    assert counts[d] == pytest.approx(4000 / 6, rel=0.15)


def test_random_shares_follow_weights_when_loads_are_equal() -> None:
    weights = (1, 2, 3, 4)
    pool = Pool("web", servers(*weights), "random", rng=random.Random(2))
    n = 20000
    counts = Counter(pool.pick("", 0.0) for _ in range(n))
    for server, weight in zip(pool.servers, weights, strict=True):
        assert counts[server] == pytest.approx(n * weight / sum(weights), rel=0.1)


def test_random_with_acquire_loads_in_proportion_to_weight() -> None:
    pool = Pool("web", servers(3, 1), "random", rng=random.Random(3))
    for _ in range(4000):
        server = pool.pick("", 0.0)
        assert server is not None
        server.acquire()
    a, b = pool.servers
    assert a.active / b.active == pytest.approx(3, rel=0.1)


def test_random_single_candidate() -> None:
    a, b = pool_servers = servers(1, 5)
    pool = Pool("web", pool_servers, "random", rng=random.Random(4))
    assert {pool.pick("", 0.0, [b]) for _ in range(20)} == {a}


# --- source (consistent hashing) --------------------------------------------------------------


def mapping(pool: Pool, ips: Sequence[str], exclude: Sequence[Server] = ()) -> dict[str, str]:
    """Client IP -> name of the server ``pool`` picks for it."""
    result = {}
    for ip in ips:
        server = pool.pick(ip, 0.0, exclude)
        assert server is not None
        result[ip] = server.name
    return result


def source_pool(*weights: int) -> Pool:
    return Pool("web", servers(*weights), "source")


def test_source_same_client_same_server_across_processes() -> None:
    # Two pools built separately stand in for two worker processes. The expected
    # names pin the hash, so a change to it (or use of hash()) fails here.
    ips = random_ips(2000)
    first = mapping(source_pool(1, 1, 1, 1), ips)
    second = mapping(source_pool(1, 1, 1, 1), ips)
    assert first == second
    pinned = {"192.0.2.1": "a", "198.51.100.7": "d", "2001:db8::1": "b", "10.1.2.3": "b"}
    assert mapping(source_pool(1, 1, 1, 1), list(pinned)) == pinned


def test_source_is_sticky_for_repeated_picks() -> None:
    pool = source_pool(1, 1, 1)
    assert {pool.pick("203.0.113.9", float(t)) for t in range(20)} == {pool.pick("203.0.113.9", 0.0)}


def test_source_maps_ipv4_mapped_ipv6_like_ipv4() -> None:
    pool = source_pool(1, 1, 1, 1)
    for ip in random_ips(100):
        assert pool.pick("::ffff:" + ip, 0.0) is pool.pick(ip, 0.0)
        assert pool.pick("::FFFF:" + ip, 0.0) is pool.pick(ip, 0.0)


def test_source_distribution_is_roughly_even() -> None:
    counts = Counter(mapping(source_pool(1, 1, 1, 1), random_ips(10000)).values())
    assert len(counts) == 4
    for n in counts.values():
        assert 2500 * 0.75 <= n <= 2500 * 1.25


def test_source_distribution_follows_weight() -> None:
    counts = Counter(mapping(source_pool(1, 3), random_ips(10000)).values())
    assert counts["b"] / counts["a"] == pytest.approx(3, rel=0.25)


def test_source_down_server_moves_only_its_clients_and_they_come_back() -> None:
    pool = source_pool(1, 1, 1, 1)
    ips = random_ips(2000)
    before = mapping(pool, ips)
    victim = pool.servers[2]
    down(victim)
    during = mapping(pool, ips)
    moved = {ip for ip in ips if before[ip] != during[ip]}
    assert moved == {ip for ip in ips if before[ip] == victim.name}
    assert len(moved) > 0
    assert victim.name not in during.values()
    # The moved clients spread over the survivors rather than piling on one.
    assert len({during[ip] for ip in moved}) == 3
    victim.health.checked_up = True
    assert mapping(pool, ips) == before


def test_source_exclude_moves_only_the_excluded_servers_clients() -> None:
    pool = source_pool(1, 1, 1, 1)
    ips = random_ips(2000)
    before = mapping(pool, ips)
    during = mapping(pool, ips, [pool.servers[0]])
    assert {ip for ip in ips if before[ip] != during[ip]} == {ip for ip in ips if before[ip] == "a"}


def test_source_removed_server_moves_only_its_clients() -> None:
    # A reload that drops a server builds a new Pool; names keep the others in place.
    ips = random_ips(2000)
    full = Pool("web", servers(1, 1, 1, 1), "source")
    before = mapping(full, ips)
    after = mapping(Pool("web", [s for s in servers(1, 1, 1, 1) if s.name != "c"], "source"), ips)
    assert {ip for ip in ips if before[ip] != after[ip]} == {ip for ip in ips if before[ip] == "c"}


def naive_ring_walk(pool: Pool, ip: str, now: float, exclude: Sequence[Server]) -> tuple[Server | None, int]:
    """Walk the primary ring point by point: the reference answer for source picks, and its length."""
    assert pool._rings is not None
    ring = pool._rings[0]
    keys, owners = ring._keys, ring._owners
    start = bisect_left(keys, _hash64(_client_key(ip))) % len(keys)
    for step in range(len(keys)):
        server = owners[(start + step) % len(keys)]
        if server.weight > 0 and server.health.is_up(now) and server not in exclude:
            return server, step
    return None, len(keys)


def test_source_long_walks_match_the_naive_walk() -> None:
    # With most servers down the walk often exceeds its limit and switches to the
    # per-server search, which must give the same answer as walking on.
    pool = Pool("web", [Server(f"s{i}", "h", 1, weight=1 + i % 3) for i in range(40)], "source")
    for server in pool.servers[:-3]:
        down(server)
    longest = 0
    for ip in random_ips(300):
        for exclude in ((), pool.servers[-1:], pool.servers[-2:], pool.servers[-3:]):
            expected, steps = naive_ring_walk(pool, ip, 0.0, exclude)
            assert pool.pick(ip, 0.0, exclude) is expected
            longest = max(longest, steps)
    assert longest > _RING_WALK_LIMIT


# --- invariants -------------------------------------------------------------------------------


@st.composite
def pools(draw: st.DrawFn) -> tuple[Pool, list[Server], float]:
    """A pool with random weights, backups and health, and a random exclusion list."""
    now = draw(st.floats(min_value=0.0, max_value=100.0))
    members = []
    for i in range(draw(st.integers(min_value=0, max_value=6))):
        health = ServerHealth()
        health.checked_up = draw(st.booleans())
        health.ejected_until = draw(st.sampled_from([float("-inf"), now - 1.0, now, now + 1.0]))
        members.append(
            Server(
                f"s{i}",
                "h",
                i,
                weight=draw(st.integers(min_value=0, max_value=3)),
                backup=draw(st.booleans()),
                health=health,
            )
        )
        members[-1].active = draw(st.integers(min_value=0, max_value=5))
    pool = Pool("p", members, draw(st.sampled_from(POLICIES)), rng=random.Random(draw(st.integers())))
    exclude = draw(st.lists(st.sampled_from(members), unique=True)) if members else []
    return pool, exclude, now


@given(pools(), st.lists(st.ip_addresses().map(str), min_size=1, max_size=5))
def test_pick_returns_only_eligible_servers(case: tuple[Pool, list[Server], float], ips: list[str]) -> None:
    pool, exclude, now = case

    def eligible(s: Server) -> bool:
        return s.weight > 0 and s.health.is_up(now) and s not in exclude

    primaries = [s for s in pool.servers if not s.backup and eligible(s)]
    backups = [s for s in pool.servers if s.backup and eligible(s)]
    for ip in ips:
        for _ in range(3):
            picked = pool.pick(ip, now, exclude)
            if primaries:
                assert picked in primaries
            elif backups:
                assert picked in backups
            else:
                assert picked is None


def test_single_pool_picks_its_server_like_a_configured_one() -> None:
    """Pool.single (one per client-chosen destination) behaves as Pool(name, [server])."""
    server = Server("dest", "192.0.2.1", 443)
    pool = Pool.single("http-proxy:proxy", server)
    reference = Pool("http-proxy:proxy", [Server("dest", "192.0.2.1", 443)])
    assert (pool.name, pool.balance, [s.name for s in pool.servers]) == (
        reference.name,
        reference.balance,
        [s.name for s in reference.servers],
    )
    assert pool.pick("198.51.100.1", 0.0) is server
    assert pool.pick("198.51.100.1", 0.0, exclude=[server]) is None
    server.health.ejected_until = 10.0
    assert pool.pick("198.51.100.1", 5.0) is None  # ejected, as in any pool
    assert pool.pick("198.51.100.1", 11.0) is server
