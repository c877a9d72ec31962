"""The runtime types: addresses, PROXY protocol trust, lookups."""

from __future__ import annotations

import ipaddress
import pickle
import socket

import pytest

from portway.config.default import default_config
from portway.config.model import (
    LISTENER_MODES,
    PLANNED_MODES,
    BindSpec,
    FrozenMap,
    ListenerDoc,
    ProxyProtocolIn,
)
from portway.errors import ConfigIssue


def test_bind_spec_str_and_family() -> None:
    assert str(BindSpec("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(BindSpec("::", 443)) == "[::]:443"
    assert BindSpec("127.0.0.1", 80).family == socket.AF_INET
    assert BindSpec("::1", 80).family == socket.AF_INET6


def _pp(*networks: str) -> ProxyProtocolIn:
    return ProxyProtocolIn("optional", tuple(ipaddress.ip_network(n) for n in networks))


@pytest.mark.parametrize(
    ("ip", "trusted"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("::ffff:10.9.9.9", True),  # IPv4-mapped, as a dual-stack socket reports it
        ("::ffff:192.168.0.1", False),
        ("2001:db8::5", True),
        ("2001:db9::5", False),
        ("not an ip", False),
        ("", False),
    ],
)
def test_proxy_protocol_trusts(ip: str, trusted: bool) -> None:
    assert _pp("10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32").trusts(ip) is trusted


def test_proxy_protocol_trusts_mapped_networks_too() -> None:
    assert _pp("::ffff:0:0/96").trusts("::ffff:1.2.3.4")
    assert not ProxyProtocolIn("off", ()).trusts("127.0.0.1")


def test_frozen_map_is_read_only_and_pickles() -> None:
    mapping = FrozenMap({"a": 1, "b": 2})
    assert list(mapping) == ["a", "b"] and mapping["b"] == 2 and len(mapping) == 2
    assert mapping == {"a": 1, "b": 2}
    assert pickle.loads(pickle.dumps(mapping)) == mapping
    with pytest.raises(TypeError):
        mapping["c"] = 3  # type: ignore[index]


def test_config_lookups() -> None:
    config = default_config()
    assert config.listener("demo").backend == "admin"
    assert config.backend("admin").server("admin").port == 9090
    with pytest.raises(KeyError):
        config.listener("nope")
    with pytest.raises(KeyError):
        config.backend("admin").server("nope")


def test_modes_registry() -> None:
    assert list(LISTENER_MODES) == ["tcp", "sni", "tls", "gateway", "http-proxy"]
    assert all(issubclass(model, ListenerDoc) for model in LISTENER_MODES.values())
    assert set(PLANNED_MODES) == set()
    assert not set(PLANNED_MODES) & set(LISTENER_MODES)


def test_config_issue_str() -> None:
    issue = ConfigIssue("portway.toml", "backend.web.servers[1].address", 'expected host:port, got "web01"')
    assert str(issue) == 'portway.toml: backend.web.servers[1].address: expected host:port, got "web01"'
    assert str(ConfigIssue("portway.toml", "", "bad")) == "portway.toml: bad"
