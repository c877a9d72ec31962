"""WorkerStats bookkeeping, cross-worker merge and Prometheus/JSON rendering."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from portway.observe.httplog import HttpRecord
from portway.observe.metrics import (
    CONNECT_BUCKETS,
    HTTP_BUCKETS,
    SNIFF_BUCKETS,
    SupervisorInfo,
    WorkerStats,
    merge,
    render_json,
    render_prometheus,
)
from portway.session import Session
from portway.termination import Reason

PG = ("postgres", [("pg1", "10.0.0.5:5432", 2, False), ("pg2", "10.0.0.6:5432", 1, True)])


def new_stats(pid: int = 100) -> WorkerStats:
    stats = WorkerStats(pid)
    stats.declare([("db", 1000), ("edge", 0)], [PG])
    return stats


_next_id = iter(range(1, 1_000_000))


def session(listener: str = "db") -> Session:
    return Session(next(_next_id), listener, ("10.1.2.3", 50000), ("0.0.0.0", 5432), time.monotonic())


def route(stats: WorkerStats, s: Session, backend: str = "postgres", server: str | None = "pg1") -> None:
    s.backend = backend
    s.server = server
    stats.routed(s)


def close(stats: WorkerStats, s: Session, reason: Reason = Reason.CLIENT_CLOSED) -> None:
    s.finish(reason, time.monotonic())
    stats.closed(s)


def test_open_route_close_bookkeeping() -> None:
    stats = new_stats()
    s = session()
    stats.opened(s)
    snap = stats.snapshot()
    db = snap["listeners"]["db"]
    assert (db["connections_total"], db["active"], db["max_connections"]) == (1, 1, 1000)
    assert snap["backends"]["postgres"]["active"] == 0

    route(stats, s)
    snap = stats.snapshot()
    pg = snap["backends"]["postgres"]
    assert (pg["connections_total"], pg["active"]) == (1, 1)
    assert pg["servers"]["pg1"]["active"] == 1
    assert pg["servers"]["pg1"]["connections_total"] == 1
    assert pg["servers"]["pg2"]["connections_total"] == 0
    assert pg["servers"]["pg1"] | {"connections_total": 0, "active": 0} == {
        "address": "10.0.0.5:5432",
        "weight": 2,
        "backup": False,
        "up": True,
        "connections_total": 0,
        "active": 0,
        "connect_failures": 0,
    }

    s.bytes_in, s.bytes_out = 100, 2000
    live = stats.snapshot([s])
    assert (live["listeners"]["db"]["bytes_in"], live["listeners"]["db"]["bytes_out"]) == (100, 2000)
    assert (live["backends"]["postgres"]["bytes_in"], live["backends"]["postgres"]["bytes_out"]) == (
        100,
        2000,
    )
    assert stats.snapshot()["listeners"]["db"]["bytes_in"] == 0  # not live: not counted yet

    close(stats, s)
    snap = stats.snapshot()
    db = snap["listeners"]["db"]
    pg = snap["backends"]["postgres"]
    assert (db["active"], db["bytes_in"], db["bytes_out"], db["connections_total"]) == (0, 100, 2000, 1)
    assert (pg["active"], pg["bytes_in"], pg["bytes_out"]) == (0, 100, 2000)
    assert pg["servers"]["pg1"]["active"] == 0
    assert snap["terminations"] == {"db": {"client_closed": 1}, "edge": {}}
    assert snap["pid"] == 100
    assert json.loads(json.dumps(snap)) == snap


def test_unrouted_session_touches_only_its_listener() -> None:
    stats = new_stats()
    s = session("edge")
    stats.opened(s)
    s.bytes_in = 517
    close(stats, s, Reason.SNIFF_TIMEOUT)
    snap = stats.snapshot()
    assert snap["listeners"]["edge"]["bytes_in"] == 517
    assert snap["backends"]["postgres"]["connections_total"] == 0
    assert snap["terminations"]["edge"] == {"sniff_timeout": 1}


def test_reroute_moves_the_active_count() -> None:
    stats = new_stats()
    s = session()
    stats.opened(s)
    route(stats, s, server="pg1")
    stats.connect_failed("postgres", "pg1")
    route(stats, s, server="pg2")
    route(stats, s, server="pg2")  # idempotent
    pg = stats.snapshot()["backends"]["postgres"]
    assert (pg["connections_total"], pg["active"]) == (1, 1)
    assert pg["servers"]["pg1"]["active"] == 0
    assert pg["servers"]["pg1"]["connect_failures"] == 1
    assert (pg["servers"]["pg2"]["active"], pg["servers"]["pg2"]["connections_total"]) == (1, 1)
    close(stats, s)
    pg = stats.snapshot()["backends"]["postgres"]
    assert pg["active"] == 0
    assert pg["servers"]["pg2"]["active"] == 0


def test_rare_events_and_histograms() -> None:
    stats = new_stats()
    stats.accept_error("db")
    stats.server_state("postgres", "pg2", False)
    stats.sniffed("db", 0.0005)
    stats.sniffed("db", 0.003)
    stats.sniffed("db", 100.0)
    stats.connected("postgres", 0.001)
    snap = stats.snapshot()
    assert snap["listeners"]["db"]["accept_errors"] == 1
    assert snap["backends"]["postgres"]["servers"]["pg2"]["up"] is False
    h = snap["histograms"]["sniff_seconds"]["db"]
    assert h["bounds"] == list(SNIFF_BUCKETS)
    assert len(h["buckets"]) == len(SNIFF_BUCKETS) + 1
    assert h["buckets"][0] == 1  # 0.0005 <= 0.001
    assert h["buckets"][SNIFF_BUCKETS.index(0.005)] == 1  # 0.0025 < 0.003 <= 0.005
    assert h["buckets"][-1] == 1  # above the last bound
    assert h["count"] == 3
    assert h["sum"] == pytest.approx(100.0035)
    c = snap["histograms"]["connect_seconds"]["postgres"]
    assert c["buckets"][CONNECT_BUCKETS.index(0.001)] == 1  # a value on a bound goes in that bucket
    assert snap["histograms"]["sniff_seconds"]["edge"]["count"] == 0


def test_declare_keeps_adds_and_drops() -> None:
    stats = new_stats()
    busy = session("edge")
    stats.opened(busy)
    done = session("db")
    stats.opened(done)
    route(stats, done)
    close(stats, done)
    stats.server_state("postgres", "pg1", False)

    stats.declare(
        [("db", 50), ("new", 10)],
        [("postgres", [("pg1", "10.0.0.50:5432", 3, False)]), ("cache", [("c1", "10.0.0.9:6379", 1, False)])],
    )
    snap = stats.snapshot()
    assert set(snap["listeners"]) == {"db", "new", "edge"}  # edge still has a connection
    assert snap["listeners"]["db"]["connections_total"] == 1
    assert snap["listeners"]["db"]["max_connections"] == 50
    assert snap["listeners"]["new"]["connections_total"] == 0
    servers = snap["backends"]["postgres"]["servers"]
    assert set(servers) == {"pg1"}
    assert servers["pg1"]["address"] == "10.0.0.50:5432"
    assert servers["pg1"]["connections_total"] == 1
    assert servers["pg1"]["up"] is False  # state survives a reload
    assert snap["backends"]["cache"]["servers"]["c1"]["up"] is True

    close(stats, busy)
    snap = stats.snapshot()
    assert "edge" not in snap["listeners"]
    assert "edge" not in snap["terminations"]


def test_dropped_backend_stays_while_routed() -> None:
    stats = new_stats()
    s = session()
    stats.opened(s)
    route(stats, s)
    stats.declare([("db", 0)], [])
    assert stats.snapshot()["backends"]["postgres"]["servers"]["pg1"]["active"] == 1
    close(stats, s)
    assert stats.snapshot()["backends"] == {}


def test_undeclared_names_are_created_on_use() -> None:
    stats = WorkerStats(1)
    s = session("adhoc")
    stats.opened(s)
    route(stats, s, backend="dyn", server="x")
    close(stats, s)
    snap = stats.snapshot()
    assert snap["listeners"]["adhoc"]["connections_total"] == 1
    assert snap["backends"]["dyn"]["servers"]["x"]["connections_total"] == 1


def two_workers() -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = new_stats(1), new_stats(2)
    for stats, n, nbytes in ((a, 2, 10), (b, 3, 100)):
        for _ in range(n):
            s = session()
            stats.opened(s)
            route(stats, s)
            s.bytes_in, s.bytes_out = nbytes, 2 * nbytes
            close(stats, s)
        stats.sniffed("db", 0.002)
        stats.connected("postgres", 0.02)
    open_one = session()
    b.opened(open_one)
    route(b, open_one, server="pg2")
    open_one.bytes_in = 7
    a.server_state("postgres", "pg1", False)
    b.server_state("postgres", "pg2", False)
    a.declare([("db", 1000), ("edge", 0)], [("postgres", PG[1] + [("pg3", "10.0.0.7:5432", 1, False)])])
    a.server_state("postgres", "pg3", True)
    a.accept_error("db")
    return a.snapshot(), b.snapshot([open_one])


def test_merge_sums_counters_and_histograms() -> None:
    sa, sb = two_workers()
    m = merge([sa, sb])
    db = m["listeners"]["db"]
    assert db["connections_total"] == 6
    assert db["active"] == 1
    assert db["bytes_in"] == 2 * 10 + 3 * 100 + 7
    assert db["bytes_out"] == 2 * 20 + 3 * 200
    assert db["max_connections"] == 1000  # a setting, not summed
    assert db["accept_errors"] == 1
    pg = m["backends"]["postgres"]
    assert (pg["connections_total"], pg["active"], pg["bytes_in"]) == (6, 1, 327)
    assert pg["servers"]["pg1"]["connections_total"] == 5
    assert m["terminations"]["db"] == {"client_closed": 5}
    h = m["histograms"]["sniff_seconds"]["db"]
    assert h["count"] == 2
    assert h["sum"] == pytest.approx(0.004)
    assert h["buckets"][SNIFF_BUCKETS.index(0.0025)] == 2
    assert m["histograms"]["connect_seconds"]["postgres"]["count"] == 2
    assert [w["pid"] for w in m["workers"]] == [1, 2]
    assert m["workers"][1]["active"] == 1
    assert m["workers"][1]["connections_total"] == 4
    assert m["time"] == max(sa["time"], sb["time"])
    assert json.loads(json.dumps(m)) == m


def test_merge_up_semantics() -> None:
    sa, sb = two_workers()
    servers = merge([sa, sb])["backends"]["postgres"]["servers"]
    assert (servers["pg1"]["up"], servers["pg1"]["up_workers"], servers["pg1"]["workers"]) == (False, 1, 2)
    assert (servers["pg2"]["up"], servers["pg2"]["up_workers"], servers["pg2"]["workers"]) == (False, 1, 2)
    assert (servers["pg3"]["up"], servers["pg3"]["up_workers"], servers["pg3"]["workers"]) == (True, 1, 1)


def test_merge_of_nothing_and_mismatched_bounds() -> None:
    empty = merge([])
    assert empty["listeners"] == {} and empty["workers"] == []
    sa, sb = two_workers()
    sb["histograms"]["sniff_seconds"]["db"]["bounds"] = [1.0]
    with pytest.raises(ValueError, match="bounds"):
        merge([sa, sb])


def info() -> SupervisorInfo:
    return SupervisorInfo(
        started=1_700_000_000.5,
        workers=[{"pid": 1, "generation": 1, "started": 1.0, "restarts": 0}, {"pid": 2}],
        worker_restarts_total=3,
        config_source="/etc/portway.toml",
        reloads_total=4,
        reload_failures_total=1,
        version="9.9.9",
    )


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, key
            out[key] = sample.value
    return out


def lbl(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_render_prometheus_parses_back() -> None:
    m = merge(list(two_workers()))
    text = render_prometheus(m, info()).decode()
    v = samples(text)
    assert v[("portway_connections_total", lbl(listener="db"))] == 6
    assert v[("portway_connections_active", lbl(listener="db"))] == 1
    assert v[("portway_listener_max_connections", lbl(listener="db"))] == 1000
    assert v[("portway_bytes_total", lbl(listener="db", direction="in"))] == 327
    assert v[("portway_bytes_total", lbl(listener="db", direction="out"))] == 640
    assert v[("portway_accept_errors_total", lbl(listener="db"))] == 1
    assert v[("portway_backend_connections_total", lbl(backend="postgres"))] == 6
    assert v[("portway_backend_connections_active", lbl(backend="postgres"))] == 1
    assert v[("portway_backend_bytes_total", lbl(backend="postgres", direction="in"))] == 327
    assert v[("portway_server_connections_total", lbl(backend="postgres", server="pg1"))] == 5
    assert v[("portway_server_connections_active", lbl(backend="postgres", server="pg2"))] == 1
    assert v[("portway_server_connect_failures_total", lbl(backend="postgres", server="pg1"))] == 0
    assert v[("portway_server_up", lbl(backend="postgres", server="pg1"))] == 0
    assert v[("portway_server_up", lbl(backend="postgres", server="pg3"))] == 1
    assert v[("portway_terminations_total", lbl(listener="db", reason="client_closed"))] == 5
    assert v[("portway_terminations_total", lbl(listener="db", reason="sniff_timeout"))] == 0
    assert v[("portway_terminations_total", lbl(listener="edge", reason="shutdown"))] == 0

    sniff = "portway_sniff_duration_seconds"
    assert v[(sniff + "_bucket", lbl(listener="db", le="0.001"))] == 0
    assert v[(sniff + "_bucket", lbl(listener="db", le="0.0025"))] == 2
    assert v[(sniff + "_bucket", lbl(listener="db", le="10.0"))] == 2
    assert v[(sniff + "_bucket", lbl(listener="db", le="+Inf"))] == 2
    assert v[(sniff + "_count", lbl(listener="db"))] == 2
    assert v[(sniff + "_sum", lbl(listener="db"))] == pytest.approx(0.004)
    conn = "portway_connect_duration_seconds"
    assert v[(conn + "_bucket", lbl(backend="postgres", le="0.025"))] == 2
    assert v[(conn + "_bucket", lbl(backend="postgres", le="0.01"))] == 0
    assert v[(conn + "_count", lbl(backend="postgres"))] == 2

    assert v[("portway_workers", lbl())] == 2
    assert v[("portway_worker_restarts_total", lbl())] == 3
    assert v[("portway_config_reloads_total", lbl())] == 4
    assert v[("portway_config_reload_failures_total", lbl())] == 1
    assert v[("portway_start_time_seconds", lbl())] == 1_700_000_000.5
    assert v[("portway_build_info", lbl(version="9.9.9"))] == 1

    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["portway_sniff_duration_seconds"] == "histogram"
    assert types["portway_connections"] == "counter"
    assert types["portway_connections_active"] == "gauge"


def test_render_prometheus_of_empty_merge() -> None:
    v = samples(render_prometheus(merge([]), SupervisorInfo(started=1.0)).decode())
    assert v[("portway_workers", lbl())] == 0


def test_render_json() -> None:
    m = merge(list(two_workers()))
    doc = json.loads(render_json(m, info()))
    assert doc["supervisor"]["version"] == "9.9.9"
    assert doc["supervisor"]["config_source"] == "/etc/portway.toml"
    assert doc["supervisor"]["uptime_s"] > 0
    assert doc["listeners"]["db"]["connections_total"] == 6
    assert doc["backends"]["postgres"]["servers"]["pg3"]["up"] is True


def test_stats_json_carries_reason_codes_and_tls_handshakes() -> None:
    stats = WorkerStats(pid=1)
    stats.handshake("edge", "TLSv1.3", "h2")
    stats.handshake("edge", "TLSv1.3", "h2")
    stats.handshake("edge", "TLSv1.2", None)
    merged = merge([stats.snapshot(), stats.snapshot()])
    assert merged["tls_handshakes"] == {"edge": {"TLSv1.3 h2": 4, "TLSv1.2 -": 2}}
    doc = json.loads(render_json(merged, SupervisorInfo(started=time.time())))
    assert doc["reason_codes"]["tls_handshake_failed"] == "CR"
    text = render_prometheus(merged, SupervisorInfo(started=time.time())).decode()
    assert 'portway_tls_handshakes_total{alpn="-",listener="edge",version="TLSv1.2"} 2.0' in text


def http_record(
    listener: str = "proxy", method: str = "GET", status: int | None = 200, total_s: float | None = 0.003
) -> HttpRecord:
    rec = HttpRecord(session(listener), method, "http://example.com/", "1.1", start_mono=0.0)
    rec.status = status
    if total_s is not None:
        rec.finish(total_s)
    return rec


def test_http_requests_are_counted_by_method_and_status_class() -> None:
    stats = WorkerStats(pid=1)
    for method, status in (
        ("GET", 200),
        ("GET", 204),
        ("HEAD", 304),
        ("POST", 502),
        ("CONNECT", 200),
        ("get", 200),  # methods are case-sensitive: not GET
        ("BREW", 418),
        ("OPTIONS", 101),
        ("PATCH", None),  # no response sent
        ("PUT", 999),  # not a status class
    ):
        stats.http_request(http_record(method=method, status=status))
    stats.http_request(http_record(listener="other", method="DELETE", status=404, total_s=None))
    snap = stats.snapshot()
    assert snap["http_requests"] == {
        "proxy": {
            "GET 2xx": 2,
            "HEAD 3xx": 1,
            "POST 5xx": 1,
            "CONNECT 2xx": 1,
            "other 2xx": 1,
            "other 4xx": 1,
            "OPTIONS 1xx": 1,
            "PATCH none": 1,
            "PUT none": 1,
        },
        "other": {"DELETE 4xx": 1},
    }
    h = snap["histograms"]["http_request_seconds"]["proxy"]
    assert (h["count"], h["bounds"]) == (10, list(HTTP_BUCKETS))
    assert h["sum"] == pytest.approx(0.03)
    assert h["buckets"][HTTP_BUCKETS.index(0.005)] == 10
    assert "other" not in snap["histograms"]["http_request_seconds"]  # no duration, no histogram
    assert "db" not in new_stats().snapshot()["http_requests"]  # listeners without requests stay out


def test_http_requests_merge_across_workers() -> None:
    a, b = new_stats(1), new_stats(2)
    for _ in range(2):
        a.http_request(http_record())
    b.http_request(http_record(total_s=2.0))
    b.http_request(http_record(method="POST", status=503))
    sa, sb = a.snapshot(), b.snapshot()
    m = merge([sa, sb])
    assert m["http_requests"] == {"proxy": {"GET 2xx": 3, "POST 5xx": 1}}
    h = m["histograms"]["http_request_seconds"]["proxy"]
    assert h["count"] == 4
    assert h["sum"] == pytest.approx(3 * 0.003 + 2.0)
    assert h["buckets"][HTTP_BUCKETS.index(2.5)] == 1
    assert merge([sa])["http_requests"] == {"proxy": {"GET 2xx": 2}}
    assert merge([])["http_requests"] == {} and merge([])["histograms"]["http_request_seconds"] == {}
    doc = json.loads(render_json(m, info()))
    assert doc["http_requests"]["proxy"]["GET 2xx"] == 3


def test_http_requests_in_prometheus_text() -> None:
    a, b = new_stats(1), new_stats(2)
    a.http_request(http_record())
    a.http_request(http_record(method="BREW", status=None, total_s=0.02))
    b.http_request(http_record(total_s=45.0))
    text = render_prometheus(merge([a.snapshot(), b.snapshot()]), info()).decode()
    v = samples(text)
    assert v[("portway_http_requests_total", lbl(listener="proxy", method="GET", code="2xx"))] == 2
    assert v[("portway_http_requests_total", lbl(listener="proxy", method="other", code="none"))] == 1
    dur = "portway_http_request_duration_seconds"
    assert v[(dur + "_bucket", lbl(listener="proxy", le="0.005"))] == 1
    assert v[(dur + "_bucket", lbl(listener="proxy", le="0.025"))] == 2
    assert v[(dur + "_bucket", lbl(listener="proxy", le="30.0"))] == 2
    assert v[(dur + "_bucket", lbl(listener="proxy", le="60.0"))] == 3
    assert v[(dur + "_count", lbl(listener="proxy"))] == 3
    assert v[(dur + "_sum", lbl(listener="proxy"))] == pytest.approx(45.023)
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["portway_http_requests"] == "counter"
    assert types[dur] == "histogram"
    assert (dur + "_count", lbl(listener="db")) not in v  # only listeners that served requests
