"""``portway check`` and ``--help`` as a user runs them: a real subprocess, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
workers = 2
[[listener]]
name = "db"
mode = "tcp"
bind = ["127.0.0.1:15432", "[::1]:15432"]
backend = "pg"
idle_timeout = "90s"
[[backend]]
name = "pg"
balance = "leastconn"
servers = [{ address = "10.0.0.5:5432", weight = 2 }, { address = "10.0.0.6:5432", backup = true }]
health_check = { interval = "2s" }
connect_timeout = "2s"
send_proxy_protocol = "v2"
"""


def _portway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_check_good_config_prints_the_plan(tmp_path: Path) -> None:
    (tmp_path / "portway.toml").write_text(GOOD)
    r = _portway("check", "-c", "portway.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "listener db (mode tcp)" in out
    assert "127.0.0.1:15432" in out and "[::1]:15432" in out
    assert "idle timeout     1m30s" in out
    assert "leastconn" in out and "10.0.0.6:5432" in out and "backup" in out
    assert "connect timeout  2s" in out
    assert "configuration is valid" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[defaults]\nconect_timeout = "5s"\n',
            'portway.toml: defaults: unknown key "conect_timeout" (did you mean "connect_timeout"?)',
        ),
        ('[defaults]\nidle_timeout = "5 s"\n', "portway.toml: defaults.idle_timeout: expected a duration"),
        (
            '[[listener]]\nname = "x"\nmode = "tcp"\nbind = "::1:80"\nbackend = "pg"\n',
            'portway.toml: listener.x.bind: expected host:port, got "::1:80"',
        ),
        (
            '[[listener]]\nname = "x"\nmode = "tcp"\nbind = "127.0.0.1:80"\nbackend = "pgg"\n',
            'portway.toml: listener.x.backend: no backend named "pgg" (did you mean "pg"?)',
        ),
        (
            '[[listener]]\nname = "x"\nmode = "http_proxy"\nbind = "127.0.0.1:80"\n',
            'portway.toml: listener.x.mode: expected one of "tcp", "sni", "tls", "gateway", "http-proxy", '
            'got "http_proxy" (did you mean "http-proxy"?)',
        ),
        (
            '[[backend]]\nname = "b"\nbalance = "fastest"\nservers = [{ address = "h:1" }]\n',
            'portway.toml: backend.b.balance: expected one of "roundrobin", "leastconn", "random", "source"',
        ),
        (
            '[[backend]]\nname = "b"\nservers = [{ address = "web01" }]\n',
            'portway.toml: backend.b.servers[0].address: expected host:port, got "web01"',
        ),
        ("[admin\n", "portway.toml: invalid TOML at line 1, column 7"),
    ],
)
def test_check_broken_configs_name_file_key_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    base = GOOD if not text.startswith("[admin") else ""
    (tmp_path / "portway.toml").write_text(base + text)
    r = _portway("check", "-c", "portway.toml", cwd=tmp_path)
    assert r.returncode == 1
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert "nothing was started" in r.stderr


def test_check_reports_every_error_at_once(tmp_path: Path) -> None:
    (tmp_path / "portway.toml").write_text(
        GOOD + '[[backend]]\nname = "b"\nbalance = "x"\nservers = [{ address = "nope" }]\n'
        '[log]\nformat = "xml"\n'
    )
    r = _portway("check", "-c", "portway.toml", cwd=tmp_path)
    assert r.returncode == 1
    assert "backend.b.balance" in r.stderr
    assert "backend.b.servers[0].address" in r.stderr
    assert "log.format" in r.stderr
    assert "3 problems found" in r.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    r = _portway("check", "-c", "nope.toml", cwd=tmp_path)
    assert r.returncode == 1
    assert "nope.toml" in r.stderr and "Traceback" not in r.stderr


def test_help_teaches(tmp_path: Path) -> None:
    r = _portway("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "portway run -c portway.toml" in r.stdout and "SIGHUP" in r.stdout
    r = _portway("run", "--help", cwd=tmp_path)
    assert "--workers" in r.stdout and "examples:" in r.stdout
