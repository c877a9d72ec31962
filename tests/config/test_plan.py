"""The effective plan printed by ``portway check``."""

from __future__ import annotations

from pathlib import Path

from portway.config.default import default_config
from portway.config.load import load_file
from portway.config.plan import render_plan
from tests.config.test_load import FULL


def test_default_plan() -> None:
    plan = render_plan(default_config())
    assert plan.startswith("Portway plan for <built-in default>\n")
    assert plan.endswith("\n") and not plan.endswith("\n\n")
    assert "\x1b" not in plan
    lines = plan.splitlines()
    assert "admin          127.0.0.1:9090" in lines
    assert "access log     stdout (text)" in lines
    assert "listener demo (mode tcp)" in lines
    assert "  bind             127.0.0.1:7070" in lines
    assert "  keepalive        idle 1m, interval 10s, count 6" in lines
    assert "backend admin" in lines
    assert "    admin  127.0.0.1:9090  weight 1" in lines


def test_full_plan(tmp_path: Path) -> None:
    path = tmp_path / "portway.toml"
    path.write_text(FULL)
    lines = render_plan(load_file(path)).splitlines()
    assert "workers        3" in lines
    assert "drain timeout  1m30s" in lines
    assert f"pid file       {tmp_path / 'run' / 'portway.pid'}" in lines
    assert "  bind             0.0.0.0:5432, [::]:5432" in lines
    assert "  idle timeout     10m" in lines
    assert "  idle timeout     none" in lines
    assert "  sniff timeout    250ms" in lines
    assert "  keepalive        off" in lines
    assert "  proxy protocol   optional, trusted from 10.0.0.0/8, 127.0.0.1/32, 2001:db8::/32" in lines
    assert "  health check     every 2s, timeout 1s, rise 2, fall 3" in lines
    assert "  eject            off" in lines
    assert "  eject            after 3 failed connects, for 10s" in lines
    assert "  send proxy       v2" in lines
    assert "    pg1       10.0.0.5:5432  weight 2" in lines
    assert "    db6:5432  db6:5432       weight 1  backup" in lines
    assert "backend unused (not used by any listener)" in lines
