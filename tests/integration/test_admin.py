"""The admin endpoint of a running instance: figures summed across workers, in both formats."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.backends import LoopThread, echo_backend
from tests.integration.harness import Portway, free_port, roundtrip, tcp_config, wait_until


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_and_stats_sum_all_workers(tmp_path: Path, lt: LoopThread) -> None:
    backend = echo_backend(lt)
    dead = free_port()
    port, admin = free_port(), free_port()
    conf = tcp_config(
        port, [backend.port, dead], workers=2, admin_port=admin, backend='balance = "roundrobin"'
    )
    pw = Portway(tmp_path, conf).start()
    try:
        for _ in range(40):
            assert roundtrip(port, b"0123456789")[1] == b"0123456789"
        pw.wait_access(lambda a: len(a) >= 40)

        stats = wait_until(
            lambda: (st := pw.stats(admin))["listeners"]["front"]["connections_total"] == 40 and st,
            what="40 connections in /stats",
        )
        assert len(stats["workers"]) == 2
        assert sum(w["connections_total"] for w in stats["workers"]) == 40
        assert stats["listeners"]["front"]["bytes_in"] == 400
        assert stats["listeners"]["front"]["bytes_out"] == 400
        assert stats["terminations"]["front"] == {"client_closed": 40}
        servers = stats["backends"]["pool"]["servers"]
        assert servers["s0"]["connections_total"] == 40
        assert servers["s1"]["connect_failures"] >= 1  # roundrobin tried the dead one, retried

        status, body = pw.admin_get(admin, "/metrics")
        assert status == 200
        m = _samples(body)
        assert m[("portway_connections_total", (("listener", "front"),))] == 40
        assert m[("portway_bytes_total", (("direction", "in"), ("listener", "front")))] == 400
        assert m[("portway_terminations_total", (("listener", "front"), ("reason", "client_closed")))] == 40
        assert m[("portway_connect_duration_seconds_count", (("backend", "pool"),))] == 40
        assert m[("portway_server_up", (("backend", "pool"), ("server", "s0")))] == 1
        assert m[("portway_workers", ())] == 2
        assert m[("portway_worker_restarts_total", ())] == 0
        assert pw.admin_get(admin, "/healthz") == (200, b"ok\n")
        assert pw.admin_get(admin, "/nope")[0] == 404
    finally:
        pw.stop()
