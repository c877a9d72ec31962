"""Tests for portway.route.table: route validation and RouteTable.decide."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.route.match import NameMatcher, Networks
from portway.route.table import REFUSALS, Decision, Refusal, Route, RouteTable, Sniffed


def route(
    name: str,
    match: str | None,
    *,
    backend: str | None = None,
    dial: str | None = None,
    alpn: Iterable[str] = (),
    networks: Iterable[str] | None = None,
    action: str = "passthrough",
) -> Route:
    """A route from configuration-like strings."""
    return Route(
        name,
        None if match is None else NameMatcher.parse(match),
        alpn=frozenset(alpn),
        networks=None if networks is None else Networks.parse(networks),
        backend=backend,
        dial=dial,
        action=action,
    )


# The edge listener of DESIGN.md, plus a few more. ALPN routes come first: routes are ordered.
EDGE = RouteTable(
    [
        route("acme", "*.example.com", alpn=["acme-tls/1"], backend="acme-robot"),
        route("app", "app.example.com", action="terminate", backend="app-plain"),
        route("admin", "admin.example.com", networks=["10.0.0.0/8", "2001:db8::/32"], backend="admin"),
        route("h2", "*.example.com", alpn=["h2"], backend="web-h2"),
        route("web", "*.example.com", backend="web"),
        route("apex", "example.com", backend="web"),
        route("lab", "*.lab.example.com", dial="{sni}:443"),
        route("inner", "~^[a-z]+\\.inner\\.test$", dial="{name}.svc.local:8443"),
    ]
)


def backend_of(result: Decision | Refusal) -> tuple[str, str | None]:
    """(route name, backend) of a decision; fails the test on a refusal."""
    assert isinstance(result, Decision), result
    return result.route.name, result.backend


@pytest.mark.parametrize(
    ("sniffed", "route_name", "backend"),
    [
        # first match wins, in order
        (Sniffed("app.example.com"), "app", "app-plain"),
        (Sniffed("www.example.com"), "web", "web"),
        (Sniffed("example.com"), "apex", "web"),  # *.example.com does not cover example.com
        # the ACME challenge goes to the robot, even for a name that has its own route
        (Sniffed("app.example.com", alpn=("acme-tls/1",)), "acme", "acme-robot"),
        (Sniffed("www.example.com", alpn=("h2", "acme-tls/1")), "acme", "acme-robot"),
        # ALPN: at least one offered protocol must be in the route's set
        (Sniffed("www.example.com", alpn=("h2", "http/1.1")), "h2", "web-h2"),
        (Sniffed("www.example.com", alpn=("http/1.1",)), "web", "web"),
        # an ALPN route does not take other names
        (Sniffed("example.com", alpn=("acme-tls/1",)), "apex", "web"),
        # network condition
        (Sniffed("admin.example.com", client_ip="10.1.2.3"), "admin", "admin"),
        (Sniffed("admin.example.com", client_ip="::ffff:10.1.2.3"), "admin", "admin"),
        (Sniffed("admin.example.com", client_ip="2001:db8::5"), "admin", "admin"),
        # outside the network, admin falls through to the next route that matches the name
        (Sniffed("admin.example.com", client_ip="192.0.2.1"), "web", "web"),
        (Sniffed("admin.example.com"), "web", "web"),
        # plaintext HTTP by Host uses the same table
        (Sniffed("app.example.com", protocol="http"), "app", "app-plain"),
        (Sniffed("www.example.com", protocol="http"), "web", "web"),
        # case-insensitive, even though names should arrive lower-cased
        (Sniffed("WWW.Example.COM"), "web", "web"),
    ],
)
def test_decide_backend_routes(sniffed: Sniffed, route_name: str, backend: str) -> None:
    assert backend_of(EDGE.decide(sniffed)) == (route_name, backend)


def test_backend_decisions_are_built_once() -> None:
    first = EDGE.decide(Sniffed("www.example.com"))
    assert first is EDGE.decide(Sniffed("www.example.com"))
    assert isinstance(first, Decision)
    assert first.dial_host is None and first.dial_port is None
    assert first.route is EDGE.routes[4]
    app = EDGE.decide(Sniffed("app.example.com"))
    assert isinstance(app, Decision) and app.route.action == "terminate"


@pytest.mark.parametrize(
    ("sniffed", "route_name", "host", "port"),
    [
        (Sniffed("git.lab.example.com"), "lab", "git.lab.example.com", 443),
        (Sniffed("git.lab.example.com", protocol="http"), "lab", "git.lab.example.com", 443),
        (Sniffed("Git.Lab.Example.com"), "lab", "git.lab.example.com", 443),
        (Sniffed("db.inner.test"), "inner", "db.inner.test.svc.local", 8443),
    ],
)
def test_decide_dial_routes(sniffed: Sniffed, route_name: str, host: str, port: int) -> None:
    result = EDGE.decide(sniffed)
    assert isinstance(result, Decision), result
    assert (result.route.name, result.backend, result.dial_host, result.dial_port) == (
        route_name,
        None,
        host,
        port,
    )


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sniffed", "reason", "alert", "status", "words"),
    [
        (Sniffed(None), "no_sni", "handshake_failure", 400, "no SNI"),
        (Sniffed(""), "no_sni", "handshake_failure", 400, "no SNI"),
        (Sniffed(None, protocol="http"), "no_sni", "handshake_failure", 400, "no Host"),
        (Sniffed("unknown.org"), "no_route", "unrecognized_name", 404, "no route for SNI 'unknown.org'"),
        (
            Sniffed("a.b.example.com", protocol="http"),
            "no_route",
            "unrecognized_name",
            404,
            "no route for Host 'a.b.example.com'",
        ),
        # the regex route takes only letters before .inner.test
        (Sniffed("x1.inner.test"), "no_route", "unrecognized_name", 404, "no route"),
    ],
)
def test_refusals(sniffed: Sniffed, reason: str, alert: str, status: int, words: str) -> None:
    result = EDGE.decide(sniffed)
    assert isinstance(result, Refusal), result
    assert (result.reason, result.alert, result.http_status) == (reason, alert, status)
    assert words in result.message


def test_refusal_message_quotes_the_name_safely() -> None:
    result = EDGE.decide(Sniffed("evil\n.org"))
    assert isinstance(result, Refusal)
    assert "\n" not in result.message and "'evil\\n.org'" in result.message


def test_pattern_matched_but_conditions_not_met_is_421() -> None:
    table = RouteTable(
        [
            route("admin", "admin.example.com", networks=["10.0.0.0/8"], backend="admin"),
            route("acme", "*.example.com", alpn=["acme-tls/1"], backend="acme"),
        ]
    )
    for sniffed, name in [
        (Sniffed("admin.example.com", client_ip="192.0.2.1"), "admin"),
        (Sniffed("admin.example.com", client_ip="not-an-ip"), "admin"),
        (Sniffed("www.example.com", alpn=("h2",)), "acme"),
    ]:
        result = table.decide(sniffed)
        assert isinstance(result, Refusal), result
        assert (result.reason, result.alert, result.http_status) == ("not_allowed", "handshake_failure", 421)
        assert name in result.message


@pytest.mark.parametrize(
    ("name", "reason", "alert", "status"),
    [
        (None, "no_dial_name", "handshake_failure", 400),
        ("", "no_dial_name", "handshake_failure", 400),
        ("bad_name.example", "bad_dial_name", "unrecognized_name", 400),
        ("[::1]", "bad_dial_name", "unrecognized_name", 400),
        ("a:80", "bad_dial_name", "unrecognized_name", 400),
        (".".join(["a" * 63] * 4)[:252], "bad_dial_name", "unrecognized_name", 400),  # 252 + ".x" > 253
    ],
)
def test_dial_refusals(name: str | None, reason: str, alert: str, status: int) -> None:
    table = RouteTable([route("any", None, dial="{sni}.x:1")])
    result = table.decide(Sniffed(name))
    assert isinstance(result, Refusal), result
    assert (result.reason, result.alert, result.http_status) == (reason, alert, status)
    assert "any" in result.message


def test_every_refusal_reason_has_a_known_answer() -> None:
    for alert, status in REFUSALS.values():
        assert alert in ("handshake_failure", "unrecognized_name")
        assert status in (400, 404, 421)


# --- default routes ----------------------------------------------------------------------------


def test_default_route_takes_unknown_and_missing_names() -> None:
    table = RouteTable(
        [route("app", "app.example.com", backend="app"), route("default", None, backend="web")]
    )
    assert backend_of(table.decide(Sniffed("app.example.com"))) == ("app", "app")
    assert backend_of(table.decide(Sniffed("other.org"))) == ("default", "web")
    assert backend_of(table.decide(Sniffed(None))) == ("default", "web")
    assert backend_of(table.decide(Sniffed(None, protocol="http"))) == ("default", "web")


def test_default_routes_are_tried_after_named_routes_wherever_they_are() -> None:
    table = RouteTable(
        [route("default", None, backend="web"), route("app", "app.example.com", backend="app")]
    )
    assert backend_of(table.decide(Sniffed("app.example.com"))) == ("app", "app")
    assert backend_of(table.decide(Sniffed("other.org"))) == ("default", "web")


def test_routes_with_a_condition_but_no_match_are_rules_tried_in_order() -> None:
    table = RouteTable(
        [
            route("acme-default", None, alpn=["acme-tls/1"], backend="acme"),
            route("inside", None, networks=["10.0.0.0/8"], backend="inside"),
            route("app", "app.example.com", backend="app"),
            route("default", None, backend="web"),
        ]
    )
    assert backend_of(table.decide(Sniffed("x.org", alpn=("acme-tls/1",)))) == ("acme-default", "acme")
    assert backend_of(table.decide(Sniffed(None, client_ip="10.0.0.9"))) == ("inside", "inside")
    assert backend_of(table.decide(Sniffed(None, client_ip="192.0.2.9"))) == ("default", "web")
    # The ALPN rule comes first, so an ACME client for app.example.com reaches the robot...
    assert backend_of(table.decide(Sniffed("app.example.com", alpn=("acme-tls/1",)))) == (
        "acme-default",
        "acme",
    )
    # ...and an ordinary client for it reaches the app.
    assert backend_of(table.decide(Sniffed("app.example.com"))) == ("app", "app")


def test_default_conditions_unmet_without_a_name_is_no_sni() -> None:
    table = RouteTable([route("inside", None, networks=["10.0.0.0/8"], backend="inside")])
    result = table.decide(Sniffed(None, client_ip="192.0.2.9"))
    assert isinstance(result, Refusal) and result.reason == "no_sni"
    result = table.decide(Sniffed("x.org", client_ip="192.0.2.9"))
    assert isinstance(result, Refusal) and result.reason == "no_route"


def test_dial_default_without_name_refuses_and_does_not_fall_through() -> None:
    table = RouteTable([route("dial-any", None, dial="{sni}:443"), route("default", None, backend="web")])
    result = table.decide(Sniffed(None))
    assert isinstance(result, Refusal) and result.reason == "no_dial_name"
    decision = table.decide(Sniffed("x.org"))
    assert isinstance(decision, Decision) and (decision.dial_host, decision.dial_port) == ("x.org", 443)


def test_empty_table_refuses_everything() -> None:
    table = RouteTable([])
    assert isinstance(table.decide(Sniffed("a.b")), Refusal)
    assert isinstance(table.decide(Sniffed(None)), Refusal)


# --- Route and RouteTable validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("dial", "host_prefix", "port"),
    [
        ("{sni}:443", "", 443),
        ("{name}:8443", "", 8443),
        ("{sni}.svc.cluster.local:1", "", 1),
        ("edge.{sni}:65535", "edge.", 65535),
    ],
)
def test_dial_templates(dial: str, host_prefix: str, port: int) -> None:
    r = route("r", None, dial=dial)
    assert r._dial_prefix == host_prefix and r._dial_port == port


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dial": "{sni}"}, "the port is required"),
        ({"dial": "{sni}:"}, "port: expected 1..65535, got ''"),
        ({"dial": "{sni}:0"}, "port: expected 1..65535, got '0'"),
        ({"dial": "{sni}:65536"}, "port: expected 1..65535"),
        ({"dial": "{sni}:https"}, "port: expected 1..65535, got 'https'"),
        ({"dial": ":443"}, "the port is required"),
        ({"dial": "example.com:443"}, "placeholder {sni} or {name}"),
        ({"dial": "{host}:443"}, "placeholder {sni} or {name}"),
        ({"dial": "{sni}{name}:443"}, "one placeholder per template"),
        ({"dial": "{sni}/x:443"}, "only letters, digits"),
        ({"dial": "x{sni}:443"}, "whole labels"),
        ({"dial": "{sni}x:443"}, "whole labels"),
        ({"dial": "{sni}..x:443"}, "whole labels"),
        ({}, "exactly one of 'backend' and 'dial'"),
        ({"backend": "web", "dial": "{sni}:443"}, "exactly one of 'backend' and 'dial'"),
        ({"backend": ""}, "backend: expected a backend name"),
        ({"backend": "web", "action": "decrypt"}, "action: expected one of passthrough, terminate"),
        ({"backend": "web", "alpn": "h2"}, "alpn: expected a list of protocol names, got the string 'h2'"),
        ({"backend": "web", "alpn": frozenset({""})}, "alpn: empty protocol name"),
    ],
)
def test_bad_routes(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=r"^route 'r'") as info:
        Route("r", NameMatcher.parse("a.example.com"), **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_alpn_given_as_a_list_is_frozen() -> None:
    r = Route("r", None, alpn=["h2"], backend="web")  # type: ignore[arg-type]
    assert r.alpn == frozenset({"h2"})
    assert hash(r) == hash(Route("r", None, alpn=frozenset({"h2"}), backend="web"))


def test_route_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="route name 'a' is used twice"):
        RouteTable([route("a", "x.org", backend="x"), route("a", None, backend="y")])


def test_routes_are_kept_in_order() -> None:
    assert [r.name for r in EDGE.routes][:3] == ["acme", "app", "admin"]
    assert repr(RouteTable([route("a", None, backend="x")])) == "RouteTable(['a'])"
    assert EDGE.routes[0].is_default is False


# --- property: decide never raises -------------------------------------------------------------

NAMES = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.sampled_from(
        ["app.example.com", "www.example.com", "x.lab.example.com", "a.inner.test", "EXAMPLE.COM"]
    ),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,4}", fullmatch=True),
)
IPS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.text(max_size=45),
)
SNIFFED = st.builds(
    Sniffed,
    name=NAMES,
    alpn=st.lists(
        st.sampled_from(["h2", "http/1.1", "acme-tls/1", ""]) | st.text(max_size=10), max_size=4
    ).map(tuple),
    client_ip=IPS,
    protocol=st.sampled_from(["tls", "http"]) | st.text(max_size=6),
)
TABLES = [
    EDGE,
    RouteTable([]),
    RouteTable([*EDGE.routes, route("default", None, networks=["10.0.0.0/8"], backend="web")]),
    RouteTable([route("any", None, dial="{sni}:443")]),
]


@given(SNIFFED, st.sampled_from(TABLES))
def test_decide_returns_a_decision_or_a_refusal(sniffed: Sniffed, table: RouteTable) -> None:
    result = table.decide(sniffed)
    if isinstance(result, Decision):
        assert result.route in table.routes
        if result.route.backend is not None:
            assert result.backend == result.route.backend and result.dial_host is None
        else:
            assert result.backend is None and result.dial_host and result.dial_port
            route = result.route
            assert sniffed.name
            assert result.dial_host == route._dial_prefix + sniffed.name.lower() + route._dial_suffix
        if result.route.match is not None:
            assert sniffed.name and result.route.match.matches(sniffed.name)
    else:
        assert isinstance(result, Refusal)
        assert (result.alert, result.http_status) == REFUSALS[result.reason]
        assert result.message
