"""Loading: a full config resolves correctly, and every kind of mistake is reported well."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pickle
import socket
from pathlib import Path

import pytest

from portway.config.default import DEFAULT_TOML, default_config
from portway.config.load import load_dict, load_file, load_text
from portway.config.model import (
    BindSpec,
    Config,
    Eject,
    HealthCheck,
    Keepalive,
    ProxyProtocolIn,
    ServerSpec,
)
from portway.errors import ConfigError, ConfigIssue

FULL = """\
workers = 3
pid_file = "run/portway.pid"
drain_timeout = "1m30s"

[admin]
listen = "[::1]:9191"

[log]
access = "logs/access.log"
format = "json"
level = "debug"

[defaults]
sniff_timeout = "2s"
connect_timeout = "3s"
idle_timeout = "0"
retries = 1
max_connections = 500
keepalive = { idle = "30s", interval = "5s", count = 4 }
relay = "copy"
backlog = 256

[[listener]]
name = "db"
mode = "tcp"
bind = ["0.0.0.0:5432", "[::]:5432"]
backend = "postgres"
max_connections = 100
keepalive = false
idle_timeout = "10m"
proxy_protocol = { accept = "optional", trusted = ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"] }

[[listener]]
name = "web"
mode = "tcp"
bind = "*:8080"
backend = "web"
sniff_timeout = 0.25
relay = "splice"
backlog = 64
keepalive = { idle = "2m" }

[[listener]]
name = "local"
mode = "tcp"
bind = ["localhost:0", "localhost:0"]
backend = "web"

[[backend]]
name = "postgres"
balance = "leastconn"
servers = [
  { address = "10.0.0.5:5432", weight = 2, name = "pg1" },
  { address = "db6:5432", backup = true },
]
connect_timeout = "2s"
retries = 0
health_check = { interval = "2s", timeout = "1s", rise = 2, fall = 3 }
eject = { failures = 0, cooldown = "10s" }
send_proxy_protocol = "v2"

[[backend]]
name = "web"
servers = [{ address = "[2001:DB8::1]:80", weight = 0 }, { address = "10.0.0.7:80" }]
health_check = { interval = "5s" }

[[backend]]
name = "unused"
servers = [{ address = "localhost:1" }]
"""


@pytest.fixture
def full(tmp_path: Path) -> Config:
    path = tmp_path / "conf" / "portway.toml"
    path.parent.mkdir()
    path.write_text(FULL)
    return load_file(path)


def test_full_config_top_level(full: Config, tmp_path: Path) -> None:
    base = tmp_path / "conf"
    assert full.source == str(base / "portway.toml")
    assert full.workers == 3
    assert full.workers_auto is False
    assert full.pid_file == str(base / "run" / "portway.pid")
    assert full.drain_timeout == 90.0
    assert full.admin.listen == BindSpec("::1", 9191)
    assert full.log.access == str(base / "logs" / "access.log")
    assert (full.log.format, full.log.level) == ("json", "debug")


def test_full_config_listeners(full: Config) -> None:
    db, web, local = full.listeners
    assert db.name == "db" and db.mode == "tcp" and db.backend == "postgres"
    assert db.bind == (BindSpec("0.0.0.0", 5432), BindSpec("::", 5432))
    assert [bind.family for bind in db.bind] == [socket.AF_INET, socket.AF_INET6]
    assert db.max_connections == 100  # override
    assert db.sniff_timeout == 2.0  # inherited
    assert db.idle_timeout == 600.0  # override
    assert db.keepalive is None  # keepalive = false
    assert db.relay == "copy"  # inherited
    assert db.backlog == 256  # inherited
    assert db.proxy_protocol == ProxyProtocolIn(
        "optional",
        (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("2001:db8::/32"),
        ),
    )

    assert web.bind == (BindSpec("0.0.0.0", 8080),)  # "*" and a single string
    assert web.sniff_timeout == 0.25  # plain number of seconds
    assert web.idle_timeout == 0.0  # "0" inherited: no idle timeout
    assert web.max_connections == 500
    assert web.relay == "splice"
    assert web.backlog == 64
    assert web.keepalive == Keepalive(idle=120.0, interval=10.0, count=6)  # built-ins fill the table
    assert web.proxy_protocol == ProxyProtocolIn("off", ())

    assert local.bind == (BindSpec("127.0.0.1", 0), BindSpec("127.0.0.1", 0))  # port 0 may repeat
    assert local.keepalive == Keepalive(idle=30.0, interval=5.0, count=4)  # from [defaults]
    assert full.listener("web") is web


def test_full_config_backends(full: Config) -> None:
    assert list(full.backends) == ["postgres", "web", "unused"]
    pg = full.backend("postgres")
    assert pg is full.backends["postgres"]
    assert pg.balance == "leastconn"
    assert pg.servers == (
        ServerSpec(name="pg1", host="10.0.0.5", port=5432, weight=2, backup=False),
        ServerSpec(name="db6:5432", host="db6", port=5432, weight=1, backup=True),
    )
    assert pg.connect_timeout == 2.0
    assert pg.retries == 0
    assert pg.health_check == HealthCheck(interval=2.0, timeout=1.0, rise=2, fall=3)
    assert pg.eject == Eject(failures=0, cooldown=10.0)
    assert pg.send_proxy_protocol == "v2"

    web = full.backend("web")
    assert web.balance == "roundrobin"
    assert web.servers[0] == ServerSpec(
        name="[2001:db8::1]:80", host="2001:db8::1", port=80, weight=0, backup=False
    )
    assert web.servers[0].address == "[2001:db8::1]:80"
    assert web.connect_timeout == 3.0 and web.retries == 1  # inherited
    assert web.health_check == HealthCheck(interval=5.0, timeout=1.0, rise=2, fall=3)
    assert web.eject == Eject(failures=3, cooldown=10.0)
    assert web.send_proxy_protocol == "off"

    unused = full.backend("unused")
    assert unused.health_check is None
    assert unused.servers[0].host == "localhost"
    with pytest.raises(KeyError):
        full.backend("nope")


def test_raw_reloads_to_an_equal_config(full: Config) -> None:
    assert json.loads(json.dumps(full.raw)) == full.raw
    again = load_dict(json.loads(json.dumps(full.raw)), full.source)
    assert again == full
    assert pickle.loads(pickle.dumps(full)) == full


def test_config_is_immutable(full: Config) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.workers = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        full.backends["x"] = full.backend("web")  # type: ignore[index]


def test_load_dict_does_not_alias_its_input() -> None:
    data = default_config().raw
    config = load_dict(data, "x.toml")
    data["workers"] = 7
    assert config.raw["workers"] == "auto"


def test_minimal_config_takes_every_default() -> None:
    config = load_text(
        '[[listener]]\nname = "a"\nmode = "tcp"\nbind = "127.0.0.1:1"\nbackend = "b"\n'
        '[[backend]]\nname = "b"\nservers = [{ address = "127.0.0.1:2" }]\n',
        "min.toml",
    )
    assert config.workers_auto is True
    assert config.workers == len(os.sched_getaffinity(0))
    assert config.pid_file is None
    assert config.drain_timeout == 30.0
    assert config.admin.listen == BindSpec("127.0.0.1", 9090)
    assert (config.log.access, config.log.format, config.log.level) == ("stdout", "text", "info")
    (listener,) = config.listeners
    assert (listener.sniff_timeout, listener.idle_timeout) == (5.0, 3600.0)
    assert (listener.max_connections, listener.backlog, listener.relay) == (10000, 1024, "auto")
    assert listener.keepalive == Keepalive(idle=60.0, interval=10.0, count=6)
    backend = config.backend("b")
    assert (backend.connect_timeout, backend.retries, backend.balance) == (5.0, 2, "roundrobin")


def test_admin_off() -> None:
    config = load_text(
        'workers = 1\n[admin]\nlisten = "off"\n[log]\naccess = "off"\n'
        '[[listener]]\nname = "a"\nmode = "tcp"\nbind = "127.0.0.1:9090"\nbackend = "b"\n'
        '[[backend]]\nname = "b"\nservers = [{ address = "127.0.0.1:2" }]\n',
        "off.toml",
    )
    assert config.admin.listen is None
    assert config.log.access == "off"
    assert config.workers == 1


def test_default_config_loads() -> None:
    config = default_config()
    assert config.source == "<built-in default>"
    assert config.admin.listen == BindSpec("127.0.0.1", 9090)
    assert config.log.access == "stdout" and config.log.format == "text"
    assert config.workers_auto is True
    proxy, demo = config.listeners
    assert proxy.name == "proxy" and proxy.mode == "http-proxy"
    assert proxy.bind == (BindSpec("127.0.0.1", 8080),)
    assert proxy.http_proxy is not None and proxy.http_proxy.users_file is None
    assert proxy.http_proxy.connect_ports == ((443, 443),)
    assert demo.name == "demo" and demo.mode == "tcp"
    assert demo.bind == (BindSpec("127.0.0.1", 7070),)
    assert demo.backend == "admin"
    (server,) = config.backend("admin").servers
    assert (server.host, server.port) == ("127.0.0.1", 9090)
    assert load_text(DEFAULT_TOML, "<built-in default>") == config


# ---------------------------------------------------------------------------
# Broken configurations: one mistake each, with the exact key and the key words.
# ---------------------------------------------------------------------------

LISTENER = '[[listener]]\nname = "db"\nmode = "tcp"\nbind = "127.0.0.1:5432"\nbackend = "pg"\n'
BACKEND = '[[backend]]\nname = "pg"\nservers = [{ address = "10.0.0.5:5432" }]\n'


def listener(**keys: str | None) -> str:
    """A [[listener]] table: the valid one with ``keys`` (raw TOML values) replaced or added."""
    values = {"name": '"db"', "mode": '"tcp"', "bind": '"127.0.0.1:5432"', "backend": '"pg"', **keys}
    return "[[listener]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)


def backend(**keys: str) -> str:
    """A [[backend]] table, as :func:`listener`."""
    values = {"name": '"pg"', "servers": '[{ address = "10.0.0.5:5432" }]', **keys}
    return "[[backend]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


BROKEN = [
    pytest.param(
        '[defaults]\nconect_timeout = "5s"\n' + LISTENER + BACKEND,
        "defaults",
        ['unknown key "conect_timeout"', '(did you mean "connect_timeout"?)'],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        "workers = 2\nbogus = 1\n" + LISTENER + BACKEND,
        "",
        ['unknown key "bogus"', "expected one of: workers, pid_file"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        listener(connect_timeout='"1s"') + BACKEND,
        "listener.db",
        ['unknown key "connect_timeout"', "it belongs in [defaults] or [[backend]]"],
        id="key-in-the-wrong-section",
    ),
    pytest.param(
        listener(sniff_timeout='"5"') + BACKEND,
        "listener.db.sniff_timeout",
        ["expected a duration", 'got "5"', "needs a unit"],
        id="bad-duration",
    ),
    pytest.param(
        listener(sniff_timeout='"0"') + BACKEND,
        "listener.db.sniff_timeout",
        ["expected a duration greater than 0", 'got "0"'],
        id="zero-sniff-timeout",
    ),
    pytest.param(
        LISTENER + backend(servers='[{ address = "web01" }]'),
        "backend.pg.servers[0].address",
        ['expected host:port, got "web01"', "the port is missing"],
        id="bad-address",
    ),
    pytest.param(
        listener(bind='"127.0.0.1"') + BACKEND,
        "listener.db.bind",
        ['expected host:port, got "127.0.0.1"', "the port is missing"],
        id="missing-port",
    ),
    pytest.param(
        listener(bind='["127.0.0.1:1", "::1:5432"]') + BACKEND,
        "listener.db.bind[1]",
        ['got "::1:5432"', 'in brackets, e.g. "[::1]:5432"'],
        id="v6-without-brackets",
    ),
    pytest.param(
        listener(bind='"db.internal:5432"') + BACKEND,
        "listener.db.bind",
        ['expected an IP address, "localhost" or "*"', 'got "db.internal:5432"'],
        id="bind-to-a-name",
    ),
    pytest.param(
        listener(bind="[]") + BACKEND,
        "listener.db.bind",
        ["expected at least one address"],
        id="empty-bind",
    ),
    pytest.param(
        listener(backend='"pgg"') + BACKEND,
        "listener.db.backend",
        ['no backend named "pgg"', '(did you mean "pg"?)'],
        id="unknown-backend-did-you-mean",
    ),
    pytest.param(
        listener(backend='"zzz"') + BACKEND,
        "listener.db.backend",
        ['no backend named "zzz"', "(defined: pg)"],
        id="unknown-backend-lists-defined",
    ),
    pytest.param(
        LISTENER + listener(bind='"127.0.0.1:6000"') + BACKEND,
        "listener[1].name",
        ['listener name "db" is already used by listener[0]'],
        id="duplicate-listener-name",
    ),
    pytest.param(
        LISTENER + BACKEND + backend(),
        "backend[1].name",
        ['backend name "pg" is already used by backend[0]'],
        id="duplicate-backend-name",
    ),
    pytest.param(
        LISTENER + listener(name='"db2"', bind='"127.0.0.1:5432"') + BACKEND,
        "listener.db2.bind",
        ['127.0.0.1:5432 is already bound by listener "db"'],
        id="duplicate-bind",
    ),
    pytest.param(
        listener(bind='["localhost:5432", "127.0.0.1:5432"]') + BACKEND,
        "listener.db.bind[1]",
        ['127.0.0.1:5432 is already bound by listener "db" (bind[0])'],
        id="duplicate-bind-after-normalising",
    ),
    pytest.param(
        listener(bind='"127.0.0.1:9090"') + BACKEND,
        "listener.db.bind",
        ["127.0.0.1:9090 is already bound by [admin] listen"],
        id="bind-clashes-with-admin",
    ),
    pytest.param(
        LISTENER + backend(servers='[{ address = "10.0.0.5:5432", weight = 300 }]'),
        "backend.pg.servers[0].weight",
        ["expected an integer from 0 to 256", "got 300"],
        id="weight-out-of-range",
    ),
    pytest.param(
        LISTENER + backend(balance='"roundrobn"'),
        "backend.pg.balance",
        [
            'expected one of "roundrobin", "leastconn", "random", "source"',
            'got "roundrobn"',
            'did you mean "roundrobin"',
        ],
        id="unknown-balance",
    ),
    pytest.param(
        LISTENER + BACKEND + '[[listener]]\nname = "edge"\nmode = "http_proxy"\nbind = "0.0.0.0:443"\n',
        "listener.edge.mode",
        ['got "http_proxy" (did you mean "http-proxy"?)'],
        id="misspelt-mode",
    ),
    pytest.param(
        listener(mode='"tcpp"') + BACKEND,
        "listener.db.mode",
        ['expected one of "tcp", "sni", "tls", "gateway", "http-proxy", got "tcpp"', 'did you mean "tcp"'],
        id="unknown-mode",
    ),
    pytest.param(
        listener(mode=None) + BACKEND,
        "listener.db",
        ['missing required key "mode"', "available: tcp"],
        id="missing-mode",
    ),
    pytest.param(
        listener(proxy_protocol='{ accept = "optional" }') + BACKEND,
        "listener.db.proxy_protocol",
        ['expected a non-empty "trusted" list when accept = "optional"'],
        id="proxy-protocol-without-trusted",
    ),
    pytest.param(
        listener(proxy_protocol='{ accept = "required", trusted = ["10.0.0.1/8"] }') + BACKEND,
        "listener.db.proxy_protocol.trusted[0]",
        ['got "10.0.0.1/8"', 'did you mean "10.0.0.0/8"'],
        id="trusted-with-host-bits",
    ),
    pytest.param(
        LISTENER + BACKEND + "[log]\nformat = text\n",
        "",
        ["invalid TOML at line 10, column 10", "invalid value", "the line reads: format = text"],
        id="toml-syntax-error",
    ),
    pytest.param(
        listener(backend=None) + BACKEND,
        "listener.db",
        ['missing required key "backend"'],
        id="missing-required-key",
    ),
    pytest.param(
        LISTENER + '[[backend]]\nname = "pg"\n',
        "backend.pg",
        ['missing required key "servers"'],
        id="missing-servers",
    ),
    pytest.param(
        listener(max_connections='"10"') + BACKEND,
        "listener.db.max_connections",
        ['expected an integer >= 1, got "10"'],
        id="wrong-type-int",
    ),
    pytest.param(
        LISTENER + backend(servers='[{ address = "10.0.0.5:5432", backup = "yes" }]'),
        "backend.pg.servers[0].backup",
        ['expected true or false, got "yes"'],
        id="wrong-type-bool",
    ),
    pytest.param(
        'workers = "many"\n' + LISTENER + BACKEND,
        "workers",
        ['expected "auto" or an integer >= 1, got "many"'],
        id="wrong-type-workers",
    ),
    pytest.param(
        "[admin]\nlisten = 9090\n" + LISTENER + BACKEND,
        "admin.listen",
        ['expected host:port or "off", got 9090'],
        id="wrong-type-admin",
    ),
    pytest.param(
        LISTENER + backend(servers='[{ address = "10.0.0.5:5432", backup = true }]'),
        "backend.pg.servers",
        ["every server is a backup"],
        id="every-server-a-backup",
    ),
    pytest.param(
        LISTENER + backend(servers="[]"),
        "backend.pg.servers",
        ["expected at least one server"],
        id="no-servers",
    ),
    pytest.param(
        LISTENER + backend(servers='[{ address = "10.0.0.5:5432" }, { address = "10.0.0.5:5432" }]'),
        "backend.pg.servers",
        ['server name "10.0.0.5:5432" is used by servers[0] and servers[1]'],
        id="duplicate-server-names",
    ),
    pytest.param(
        LISTENER + backend(servers='[{ address = "10.0.0.5:0" }]'),
        "backend.pg.servers[0].address",
        ["the port must be a number from 1 to 65535"],
        id="server-port-zero",
    ),
    pytest.param(
        LISTENER + backend(health_check='{ interval = "0" }'),
        "backend.pg.health_check.interval",
        ["expected a duration greater than 0"],
        id="health-check-zero-interval",
    ),
    pytest.param(
        listener(keepalive="true") + BACKEND,
        "listener.db.keepalive",
        ["or false, got true"],
        id="keepalive-true",
    ),
    pytest.param(
        listener(keepalive='{ idle = "1.5s" }') + BACKEND,
        "listener.db.keepalive.idle",
        ['expected a whole number of seconds from "1s" to "32767s", got "1.5s"'],
        id="keepalive-fractional",
    ),
    pytest.param(
        listener(name='"my db"') + BACKEND,
        "listener[0].name",
        ['expected a name made of letters, digits, "_", "." and "-", got "my db"'],
        id="bad-name-falls-back-to-index",
    ),
    pytest.param(
        '[listener]\nname = "db"\n' + BACKEND,
        "listener",
        ["write [[listener]], not [listener]"],
        id="single-listener-table",
    ),
    pytest.param(
        "[[defaults]]\nretries = 1\n" + LISTENER + BACKEND,
        "defaults",
        ["expected a table, got a list", "write [defaults], not [[defaults]]"],
        id="array-of-defaults",
    ),
    pytest.param(
        BACKEND,
        "listener",
        ["expected at least one [[listener]]"],
        id="no-listener",
    ),
    pytest.param(
        '[log]\nformat = "xml"\n' + LISTENER + BACKEND,
        "log.format",
        ['expected one of "text", "json", got "xml"'],
        id="log-format",
    ),
]


@pytest.mark.parametrize(("text", "key", "words"), BROKEN)
def test_broken_config_is_reported(text: str, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(text, "portway.toml")
    issues = info.value.issues
    assert len(issues) == 1, str(info.value)
    (issue,) = issues
    assert issue.file == "portway.toml"
    assert issue.key == key
    for word in words:
        assert word in issue.message
    assert (
        "pydantic" not in issue.message and "http://" not in issue.message and "https://" not in issue.message
    )


def test_several_errors_are_all_reported() -> None:
    text = (
        'workers = 0\ndrain_timeout = "forever"\n'
        "[defaults]\nretries = -1\n"
        + listener(bind='["127.0.0.1:1", "::1:80"]', backend='"pgg"', relay='"spice"')
        + '[[listener]]\nname = "edge"\nmode = "http_proxy"\nbind = "0.0.0.0:443"\n'
        + backend(servers='[{ address = "web01", weight = -1 }]')
        + backend(name='"other"', balance='"fastest"')
    )
    with pytest.raises(ConfigError) as info:
        load_text(text, "portway.toml")
    found = [(issue.key, issue.message.split(",")[0]) for issue in info.value.issues]
    assert [key for key, _ in found] == [
        "workers",
        "drain_timeout",
        "defaults.retries",
        "listener.db.bind[1]",
        "listener.db.relay",
        "listener.db.backend",
        "listener.edge.mode",
        "backend.pg.servers[0].address",
        "backend.pg.servers[0].weight",
        "backend.other.balance",
    ]
    lines = str(info.value).splitlines()
    assert len(lines) == len(found)
    assert lines[0] == 'portway.toml: workers: expected "auto" or an integer >= 1, got 0'


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_file(path)
    (issue,) = info.value.issues
    assert issue.file == str(path)
    assert issue.key == ""
    assert f"there is no file at {path}" in issue.message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_file(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"workers = 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text.*line 2"):
        load_file(path)


def test_syntax_error_at_end_of_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("workers = 1\nbind = [\n", "p.toml")
    assert "invalid TOML at the end of the file (line 2)" in str(info.value)


def test_load_dict_rejects_a_non_table() -> None:
    with pytest.raises(ConfigError, match="expected a table at the top level"):
        load_dict([1, 2], "x.json")  # type: ignore[arg-type]


def test_config_error_pickles() -> None:
    error = ConfigError([ConfigIssue("a.toml", "workers", "bad"), ConfigIssue("a.toml", "", "worse")])
    again = pickle.loads(pickle.dumps(error))
    assert again.issues == error.issues
    assert str(again) == "a.toml: workers: bad\na.toml: worse"
