"""The ``sni`` listener mode: ``[[listener.route]]`` tables, their validation and their plan."""

from __future__ import annotations

import pytest

from portway.config.load import load_dict, load_text
from portway.config.model import ListenerSpec, RouteSpec
from portway.config.plan import render_plan
from portway.errors import ConfigError

EDGE = """\
[[listener]]
name = "edge"
mode = "sni"
bind = ["0.0.0.0:443"]
sniff_timeout = "2s"
max_connections = 500

  [[listener.route]]
  name = "acme"
  match = "*.internal.example.com"
  alpn = ["acme-tls/1"]
  backend = "acme"

  [[listener.route]]
  match = "~^api-[0-9]+\\\\.example\\\\.com$"
  clients = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
  backend = "web"
  action = "passthrough"

  [[listener.route]]
  name = "lab"
  match = "*.lab.example.com"
  dial = "{sni}:443"
  allow = ["10.20.0.0/16", "*.lab.example.com:443", "[fd00::/8]:8000-8999", "db.internal"]

  [[listener.route]]
  backend = "web"

[[listener]]
name = "db"
mode = "tcp"
bind = "127.0.0.1:5432"
backend = "pg"

[[backend]]
name = "acme"
servers = [{ address = "10.0.0.9:443" }]

[[backend]]
name = "web"
servers = [{ address = "10.0.0.10:443" }]

[[backend]]
name = "pg"
servers = [{ address = "10.0.0.5:5432" }]
"""


def test_sni_listener_loads_every_route_field() -> None:
    config = load_text(EDGE, "portway.toml")
    edge = config.listener("edge")
    assert edge.mode == "sni"
    assert edge.backend is None
    assert (edge.sniff_timeout, edge.max_connections) == (2.0, 500)
    assert edge.routes == (
        RouteSpec(
            name="acme",
            match="*.internal.example.com",
            alpn=("acme-tls/1",),
            clients=(),
            backend="acme",
            dial=None,
            allow=(),
            action="passthrough",
        ),
        RouteSpec(
            name="route[1]",
            match="~^api-[0-9]+\\.example\\.com$",
            alpn=(),
            clients=("10.0.0.0/8", "192.0.2.7", "2001:db8::/32"),
            backend="web",
            dial=None,
            allow=(),
            action="passthrough",
        ),
        RouteSpec(
            name="lab",
            match="*.lab.example.com",
            alpn=(),
            clients=(),
            backend=None,
            dial="{sni}:443",
            allow=("10.20.0.0/16", "*.lab.example.com:443", "[fd00::/8]:8000-8999", "db.internal"),
            action="passthrough",
        ),
        RouteSpec(
            name="route[3]",
            match=None,
            alpn=(),
            clients=(),
            backend="web",
            dial=None,
            allow=(),
            action="passthrough",
        ),
    )
    db = config.listener("db")
    assert db.routes == () and db.backend == "pg"


def test_sni_config_round_trips_through_raw() -> None:
    config = load_text(EDGE, "portway.toml")
    assert load_dict(config.raw, config.source) == config


def test_listener_spec_routes_default_to_none() -> None:
    config = load_text(EDGE, "portway.toml")
    db = config.listener("db")
    fields = {name: getattr(db, name) for name in ListenerSpec.__slots__ if name != "routes"}
    assert ListenerSpec(**fields) == db


def test_plan_shows_routes_in_order() -> None:
    plan = render_plan(load_text(EDGE, "portway.toml"))
    lines = plan.splitlines()
    start = lines.index("listener edge (mode sni)")
    block = lines[start : lines.index("", start)]
    assert not any(line.startswith("  backend ") for line in block)
    routes = [line for line in block if line.startswith("  route ")]
    assert routes == [
        "  route acme      *.internal.example.com       alpn=acme-tls/1  -> backend acme",
        "  route route[1]  ~^api-[0-9]+\\.example\\.com$  "
        "clients=10.0.0.0/8,192.0.2.7,2001:db8::/32  -> backend web",
        "  route lab       *.lab.example.com            "
        "-> dial {sni}:443 allow 10.20.0.0/16,*.lab.example.com:443,[fd00::/8]:8000-8999,db.internal",
        "  route route[3]  (default)                    -> backend web",
    ]
    assert "backend acme (not used by any listener)" not in lines
    assert "backend acme" in lines and "backend web" in lines


# ---------------------------------------------------------------------------
# Broken routes: one mistake each, with the exact key and the key words.
# ---------------------------------------------------------------------------

HEAD = '[[listener]]\nname = "edge"\nmode = "sni"\nbind = "0.0.0.0:443"\n'
BACKENDS = '[[backend]]\nname = "acme"\nservers = [{ address = "10.0.0.9:443" }]\n'
OK_ROUTE = '[[listener.route]]\nmatch = "ok.example.com"\nbackend = "acme"\n'


def route(**keys: str) -> str:
    """A [[listener.route]] table from raw TOML values."""
    return "[[listener.route]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


BROKEN = [
    pytest.param(
        route(match='"a.*.com"', backend='"acme"'),
        "listener.edge.route[1].match",
        ["'a.*.com'", "'*' is allowed only as the whole first label"],
        id="bad-wildcard",
    ),
    pytest.param(
        route(match='"~(unclosed"', backend='"acme"'),
        "listener.edge.route[1].match",
        ["'~(unclosed'", "invalid regular expression"],
        id="bad-regex",
    ),
    pytest.param(
        route(match="42", backend='"acme"'),
        "listener.edge.route[1].match",
        ["expected a server name pattern", "got 42"],
        id="match-not-a-string",
    ),
    pytest.param(
        route(clients='["10.0.0.0/8", "10.0.0.1/8"]', backend='"acme"'),
        "listener.edge.route[1].clients[1]",
        ["'10.0.0.1/8' has host bits set", "did you mean '10.0.0.0/8'"],
        id="clients-host-bits",
    ),
    pytest.param(
        route(clients='["intranet"]', backend='"acme"'),
        "listener.edge.route[1].clients[0]",
        ["'intranet' is not an IP address or CIDR"],
        id="clients-not-a-network",
    ),
    pytest.param(
        route(alpn='"h2"', backend='"acme"'),
        "listener.edge.route[1].alpn",
        ['expected a list, got "h2"'],
        id="alpn-not-a-list",
    ),
    pytest.param(
        route(match='"x.example.com"', backend='"acme"', dial='"{sni}:443"', allow='["10.0.0.0/8"]'),
        "listener.edge.route[1]",
        ['expected exactly one of "backend"', '"dial"', "got both"],
        id="backend-and-dial",
    ),
    pytest.param(
        route(match='"x.example.com"'),
        "listener.edge.route[1]",
        ["missing the target", "backend =", "dial ="],
        id="neither-backend-nor-dial",
    ),
    pytest.param(
        route(backend='"acm"'),
        "listener.edge.route[1].backend",
        ['no backend named "acm"', '(did you mean "acme"?)'],
        id="unknown-backend-did-you-mean",
    ),
    pytest.param(
        route(dial='"{sni}:443"'),
        "listener.edge.route[1]",
        ["dialling the name itself needs an allow-list: allow = [...]"],
        id="dial-without-allow",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow="[]"),
        "listener.edge.route[1].allow",
        ["dialling the name itself needs an allow-list"],
        id="dial-with-empty-allow",
    ),
    pytest.param(
        route(backend='"acme"', allow='["10.0.0.0/8"]'),
        "listener.edge.route[1].allow",
        ['"allow" applies only to a route that dials the name itself'],
        id="allow-without-dial",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["10.0.0.0/8", "10.0.0.1/8"]'),
        "listener.edge.route[1].allow[1]",
        ["no host bits set", 'got "10.0.0.1/8"', 'did you mean "10.0.0.0/8"'],
        id="allow-host-bits",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["*.lab.example.com:99999"]'),
        "listener.edge.route[1].allow[0]",
        ["ports from 1 to 65535", 'got "*.lab.example.com:99999"'],
        id="allow-bad-port",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["db.internal:443-80"]'),
        "listener.edge.route[1].allow[0]",
        ["low to high"],
        id="allow-port-range-backwards",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["~^.*$"]'),
        "listener.edge.route[1].allow[0]",
        ["regular expressions are not allowed"],
        id="allow-regex",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["a.*.com"]'),
        "listener.edge.route[1].allow[0]",
        ["'a.*.com'", "'*' is allowed only as the whole first label"],
        id="allow-bad-wildcard",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["fd00::/8:443"]'),
        "listener.edge.route[1].allow[0]",
        ['got "fd00::/8:443"', '"[fd00::/8]:443"'],
        id="allow-v6-port-without-brackets",
    ),
    pytest.param(
        route(dial='"{sni}:443"', allow='["[10.0.0.0/8]:443"]'),
        "listener.edge.route[1].allow[0]",
        ["only an IPv6 address or CIDR goes in brackets"],
        id="allow-v4-in-brackets",
    ),
    pytest.param(
        route(dial='"{sni}"', allow='["10.0.0.0/8"]'),
        "listener.edge.route[1].dial",
        ["dial '{sni}'", "the port is required"],
        id="dial-without-port",
    ),
    pytest.param(
        route(dial='"backend.local:443"', allow='["10.0.0.0/8"]'),
        "listener.edge.route[1].dial",
        ["expected the placeholder {sni} or {name}"],
        id="dial-without-placeholder",
    ),
    pytest.param(
        route(backend='"acme"', action='"terminate"'),
        "listener.edge.route[1].action",
        ['action "terminate" needs the listener\'s certificates: add certificates = ["site.pem"]'],
        id="terminate-without-certificates",
    ),
    pytest.param(
        route(backend='"acme"', action='"passthru"'),
        "listener.edge.route[1].action",
        ['expected one of "passthrough", "terminate", got "passthru"', 'did you mean "passthrough"'],
        id="unknown-action",
    ),
    pytest.param(
        route(name='"web"', backend='"acme"')
        + route(match='"b.example.com"', backend='"acme"')
        + route(name='"web"', backend='"acme"'),
        "listener.edge.route[3].name",
        ['route name "web" is already used by route[1]', "unique"],
        id="duplicate-route-names",
    ),
    pytest.param(
        route(name='"not ok"', backend='"acme"'),
        "listener.edge.route[1].name",
        ['expected a name made of letters, digits, "_", "." and "-", got "not ok"'],
        id="bad-route-name",
    ),
    pytest.param(
        route(mach='"x.example.com"', backend='"acme"'),
        "listener.edge.route[1]",
        ['unknown key "mach"', '(did you mean "match"?)'],
        id="unknown-route-key-did-you-mean",
    ),
    pytest.param(
        route(backend='"acme"', cert='"certs/app.pem"'),
        "listener.edge.route[1]",
        ['unknown key "cert"', "(it belongs in a listener's certificates = [{ cert = "],
        id="cert-on-a-route",
    ),
    pytest.param(
        route(backend='"acme"', colour='"blue"'),
        "listener.edge.route[1]",
        ['unknown key "colour"', "expected one of: name, match, alpn"],
        id="unknown-route-key",
    ),
]


@pytest.mark.parametrize(("routes", "key", "words"), BROKEN)
def test_broken_route_is_reported(routes: str, key: str, words: list[str]) -> None:
    text = HEAD + OK_ROUTE + routes + BACKENDS
    with pytest.raises(ConfigError) as info:
        load_text(text, "portway.toml")
    assert len(info.value.issues) == 1, str(info.value)
    (issue,) = info.value.issues
    assert (issue.file, issue.key) == ("portway.toml", key)
    for word in words:
        assert word in issue.message, issue.message
    assert "pydantic" not in issue.message and "Value error" not in issue.message


BROKEN_LISTENERS = [
    pytest.param(
        HEAD + BACKENDS,
        "listener.edge.route",
        ["expected at least one [[listener.route]]"],
        id="sni-without-routes",
    ),
    pytest.param(
        HEAD + "route = []\n" + BACKENDS,
        "listener.edge.route",
        ["expected at least one [[listener.route]]"],
        id="sni-with-empty-routes",
    ),
    pytest.param(
        HEAD + '[listener.route]\nbackend = "acme"\n' + BACKENDS,
        "listener.edge.route",
        ["write [[listener.route]], not [listener.route]"],
        id="single-route-table",
    ),
    pytest.param(
        HEAD + 'backend = "acme"\n' + OK_ROUTE + BACKENDS,
        "listener.edge",
        ['unknown key "backend"', "(it belongs in [[listener.route]])"],
        id="backend-on-an-sni-listener",
    ),
    pytest.param(
        '[[listener]]\nname = "db"\nmode = "tcp"\nbind = "127.0.0.1:5432"\nbackend = "acme"\n'
        + OK_ROUTE
        + BACKENDS,
        "listener.db",
        ['unknown key "route"'],
        id="route-on-a-tcp-listener",
    ),
]


@pytest.mark.parametrize(("text", "key", "words"), BROKEN_LISTENERS)
def test_broken_sni_listener_is_reported(text: str, key: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(text, "portway.toml")
    assert len(info.value.issues) == 1, str(info.value)
    (issue,) = info.value.issues
    assert issue.key == key
    for word in words:
        assert word in issue.message, issue.message


def test_every_broken_route_is_reported_with_its_path() -> None:
    text = (
        HEAD
        + route(match='"a.*.com"', backend='"acme"')
        + route(backend='"nope"')
        + route(dial='"{sni}:443"')
        + BACKENDS
    )
    with pytest.raises(ConfigError) as info:
        load_text(text, "portway.toml")
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "listener.edge.route[0].match",
        "listener.edge.route[2]",
        "listener.edge.route[1].backend",
    ]
    assert lines[0].startswith("portway.toml: listener.edge.route[0].match: server name pattern 'a.*.com'")
