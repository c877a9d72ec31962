"""TLS in the configuration: listener certificates, terminating routes, ``mode = "tls"``,
``tls`` to backends, the files checked at load time, and the plan."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portway.config.load import load_dict, load_file
from portway.config.model import BackendTls, CertFile, RouteSpec, TlsSpec
from portway.config.plan import render_plan
from portway.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> Path:
    """In tmp_path: site.pem (chain + key, for app.example.com and *.example.com), api.crt and
    api.key (api.internal), other.key (a key of another pair), ca.pem, garbage.txt, chain.pem
    (a chain without its key) and expired.pem (a self-signed certificate that expired)."""
    site = ca.issue_cert("app.example.com", "*.example.com")
    site.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    api = ca.issue_cert("api.internal")
    (tmp_path / "api.crt").write_bytes(b"".join(blob.bytes() for blob in api.cert_chain_pems))
    api.private_key_pem.write_to_path(str(tmp_path / "api.key"))
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(tmp_path / "other.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "garbage.txt").write_text("not a certificate\n")
    (tmp_path / "chain.pem").write_bytes((tmp_path / "api.crt").read_bytes())
    (tmp_path / "expired.pem").write_bytes(_expired_pem())
    return tmp_path


def _expired_pem() -> bytes:
    """A self-signed certificate for old.example.com that expired on 2020-01-31, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.example.com")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("old.example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(folder: Path, text: str) -> object:
    path = folder / "portway.toml"
    path.write_text(text)
    return load_file(path)


def _issues(folder: Path, text: str) -> list[tuple[str, str]]:
    path = folder / "portway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    for issue in info.value.issues:
        assert issue.file == str(path)
        assert "pydantic" not in issue.message and "Value error" not in issue.message
    return [(issue.key, issue.message) for issue in info.value.issues]


BACKENDS = """
[[backend]]
name = "web"
servers = [{ address = "10.0.0.10:80" }]

[[backend]]
name = "api"
servers = [{ address = "api.internal:8443" }]
"""

SNI = (
    """\
[[listener]]
name = "edge"
mode = "sni"
bind = "0.0.0.0:443"
certificates = ["site.pem", { cert = "api.crt", key = "api.key" }]
offer_alpn = ["h2", "http/1.1"]

  [[listener.route]]
  name = "app"
  match = "app.example.com"
  action = "terminate"
  backend = "web"

  [[listener.route]]
  name = "api"
  match = "api.internal"
  action = "terminate"
  offer_alpn = ["http/1.1"]
  backend = "api"

  [[listener.route]]
  name = "rest"
  backend = "web"
"""
    + BACKENDS
)


def _route(name: str, match: str | None, backend: str, action: str, offer: tuple[str, ...]) -> RouteSpec:
    return RouteSpec(
        name=name,
        match=match,
        alpn=(),
        clients=(),
        backend=backend,
        dial=None,
        allow=(),
        action=action,
        offer_alpn=offer,
    )


def test_sni_listener_with_terminating_routes(certs: Path) -> None:
    config = _load(certs, SNI)
    edge = config.listener("edge")  # type: ignore[attr-defined]
    assert edge.tls == TlsSpec(
        certificates=(
            CertFile(cert=str(certs / "site.pem"), key=None),
            CertFile(cert=str(certs / "api.crt"), key=str(certs / "api.key")),
        ),
        min_version="1.2",
        offer_alpn=("h2", "http/1.1"),
    )
    assert edge.routes == (
        _route("app", "app.example.com", "web", "terminate", ("h2", "http/1.1")),  # the listener's
        _route("api", "api.internal", "api", "terminate", ("http/1.1",)),  # its own
        _route("rest", None, "web", "passthrough", ()),  # sni: passthrough unless it says so
    )
    assert edge.backend is None
    assert load_dict(config.raw, config.source) == config  # type: ignore[attr-defined]


def test_sni_listener_without_certificates_has_no_tls(certs: Path) -> None:
    text = (
        '[[listener]]\nname = "edge"\nmode = "sni"\nbind = "0.0.0.0:443"\n'
        '[[listener.route]]\nbackend = "web"\n' + BACKENDS
    )
    edge = _load(certs, text).listener("edge")  # type: ignore[attr-defined]
    assert edge.tls is None and edge.routes[0].action == "passthrough"


TLS_BACKEND = (
    """\
[[listener]]
name = "front"
mode = "tls"
bind = "0.0.0.0:443"
certificates = "site.pem"
tls_min_version = "1.3"
offer_alpn = ["http/1.1"]
backend = "web"
"""
    + BACKENDS
)


def test_tls_mode_with_one_backend(certs: Path) -> None:
    front = _load(certs, TLS_BACKEND).listener("front")  # type: ignore[attr-defined]
    assert front.mode == "tls" and front.backend == "web"
    assert front.tls == TlsSpec(
        certificates=(CertFile(str(certs / "site.pem"), None),), min_version="1.3", offer_alpn=("http/1.1",)
    )
    assert front.routes == (_route("default", None, "web", "terminate", ("http/1.1",)),)


TLS_ROUTES = (
    """\
[[listener]]
name = "front"
mode = "tls"
bind = "0.0.0.0:443"
certificates = [{ cert = "site.pem" }, { cert = "api.crt", key = "api.key" }]

  [[listener.route]]
  match = "api.internal"
  offer_alpn = ["h2"]
  backend = "api"

  [[listener.route]]
  match = "*.example.com"
  action = "passthrough"
  backend = "web"

  [[listener.route]]
  backend = "web"
"""
    + BACKENDS
)


def test_tls_mode_with_routes(certs: Path) -> None:
    front = _load(certs, TLS_ROUTES).listener("front")  # type: ignore[attr-defined]
    assert front.backend is None
    assert front.tls is not None and front.tls.offer_alpn == () and front.tls.min_version == "1.2"
    assert front.tls.certificates[0] == CertFile(str(certs / "site.pem"), None)
    assert front.routes == (
        _route("route[0]", "api.internal", "api", "terminate", ("h2",)),  # tls: terminate by default
        _route("route[1]", "*.example.com", "web", "passthrough", ()),
        _route("route[2]", None, "web", "terminate", ()),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", BackendTls(verify=True, ca=None, server_name=None)),
        ("false", None),
        ("{}", BackendTls(verify=True, ca=None, server_name=None)),
        ('{ ca = "ca.pem", server_name = "api.internal" }', BackendTls(True, "<ca>", "api.internal")),
        ('{ verify = false, server_name = "{sni}" }', BackendTls(False, None, "{sni}")),
        ('{ server_name = "10.0.0.7" }', BackendTls(True, None, "10.0.0.7")),
        (None, None),
    ],
)
def test_backend_tls(certs: Path, value: str | None, expected: BackendTls | None) -> None:
    text = TLS_BACKEND + ("" if value is None else f"tls = {value}\n")
    tls = _load(certs, text).backend("api").tls  # type: ignore[attr-defined]
    if expected is not None and expected.ca == "<ca>":
        expected = BackendTls(expected.verify, str(certs / "ca.pem"), expected.server_name)
    assert tls == expected


# ---------------------------------------------------------------------------
# Mistakes: one each, with the exact key path and the key words of the sentence.
# ---------------------------------------------------------------------------


def _sni(listener_keys: str = "", route_keys: str = 'backend = "web"\n', backend_keys: str = "") -> str:
    return (
        '[[listener]]\nname = "edge"\nmode = "sni"\nbind = "0.0.0.0:443"\n'
        + listener_keys
        + "[[listener.route]]\n"
        + route_keys
        + BACKENDS
        + backend_keys
    )


def _tls(listener_keys: str = 'certificates = ["site.pem"]\nbackend = "web"\n', extra: str = "") -> str:
    return (
        '[[listener]]\nname = "edge"\nmode = "tls"\nbind = "0.0.0.0:443"\n' + listener_keys + extra + BACKENDS
    )


BROKEN = [
    pytest.param(
        _sni(route_keys='action = "terminate"\nbackend = "web"\n'),
        "listener.edge.route[0].action",
        ['action "terminate" needs the listener\'s certificates: add certificates = ["site.pem"]'],
        id="terminate-without-certificates",
    ),
    pytest.param(
        _sni('certificates = ["missing.pem"]\n'),
        "listener.edge.certificates[0]",
        ["missing.pem: no such file", "a relative path is taken from the configuration file's directory"],
        id="missing-cert-file",
    ),
    pytest.param(
        _sni('certificates = ["site.pem", { cert = "api.crt", key = "nokey.key" }]\n'),
        "listener.edge.certificates[1]",
        ["nokey.key: no such file (expected a PEM private key)"],
        id="missing-key-file",
    ),
    pytest.param(
        _sni('certificates = [{ cert = "api.crt", key = "other.key" }]\n'),
        "listener.edge.certificates[0]",
        ["other.key: the private key does not belong to the certificate in", "api.crt"],
        id="key-does-not-match",
    ),
    pytest.param(
        _sni('certificates = ["site.pem", "garbage.txt"]\n'),
        "listener.edge.certificates[1]",
        ["garbage.txt: not a PEM certificate"],
        id="not-pem",
    ),
    pytest.param(
        _sni('certificates = [{ cert = "api.crt", key = "garbage.txt" }]\n'),
        "listener.edge.certificates[0]",
        ["garbage.txt: not a PEM private key"],
        id="key-not-pem",
    ),
    pytest.param(
        _sni('certificates = ["chain.pem"]\n'),
        "listener.edge.certificates[0]",
        ["chain.pem: needs a PEM certificate chain and its private key, and holds no private key", "key ="],
        id="one-file-form-without-key",
    ),
    pytest.param(
        _sni('certificates = ["expired.pem"]\n'),
        "listener.edge.certificates[0]",
        ["expired.pem: the certificate expired on 2020-01-31", "renew"],
        id="expired",
    ),
    pytest.param(
        _sni("certificates = []\n"),
        "listener.edge.certificates",
        ["expected at least one certificate, got an empty list"],
        id="empty-certificates",
    ),
    pytest.param(
        _sni("certificates = [42]\n"),
        "listener.edge.certificates[0]",
        ['expected the path of a PEM file holding the chain and its key, like "site.pem"', "got 42"],
        id="certificate-not-a-string",
    ),
    pytest.param(
        _sni('certificates = [{ cert = "api.crt", kye = "api.key" }]\n'),
        "listener.edge.certificates[0]",
        ['unknown key "kye"', 'did you mean "key"'],
        id="certificate-table-unknown-key",
    ),
    pytest.param(
        _sni('certificates = [{ key = "api.key" }]\n'),
        "listener.edge.certificates[0]",
        ['missing required key "cert"'],
        id="certificate-table-without-cert",
    ),
    pytest.param(
        _sni('certificates = ["site.pem"]\ntls_min_version = "1.1"\n'),
        "listener.edge.tls_min_version",
        ['expected one of "1.2", "1.3", got "1.1"'],
        id="bad-tls-min-version",
    ),
    pytest.param(
        _sni('certificates = ["site.pem"]\ntls_min_version = 1.3\n'),
        "listener.edge.tls_min_version",
        ['expected "1.2" or "1.3" as a string, got 1.3', '(write "1.3" in quotes)'],
        id="tls-min-version-as-a-number",
    ),
    pytest.param(
        _sni('tls_min_version = "1.3"\n'),
        "listener.edge.tls_min_version",
        ['"tls_min_version" applies only to a listener that terminates TLS', "add certificates ="],
        id="tls-min-version-without-certificates",
    ),
    pytest.param(
        _sni('certificates = ["site.pem"]\noffer_alpn = ["h2", ""]\n'),
        "listener.edge.offer_alpn[1]",
        ['expected an ALPN protocol name like "h2" or "http/1.1", got ""'],
        id="empty-alpn-protocol",
    ),
    pytest.param(
        _sni('certificates = ["site.pem"]\noffer_alpn = ["' + "x" * 256 + '"]\n'),
        "listener.edge.offer_alpn[0]",
        ["of at most 255 bytes, got one of 256 bytes"],
        id="long-alpn-protocol",
    ),
    pytest.param(
        _sni('certificates = ["site.pem"]\noffer_alpn = ["hé"]\n'),
        "listener.edge.offer_alpn[0]",
        ["(printable ASCII)", 'got "hé"'],
        id="non-ascii-alpn-protocol",
    ),
    pytest.param(
        _sni('certificates = ["site.pem"]\n', route_keys='offer_alpn = ["h2"]\nbackend = "web"\n'),
        "listener.edge.route[0].offer_alpn",
        [
            '"offer_alpn" applies only to a route that terminates TLS',
            'in mode "sni" a route passes TLS through unless it says action = "terminate"',
        ],
        id="offer-alpn-on-a-passthrough-route",
    ),
    pytest.param(
        _tls(
            'certificates = ["site.pem"]\n',
            '[[listener.route]]\naction = "passthrough"\noffer_alpn = ["h2"]\nbackend = "web"\n',
        ),
        "listener.edge.route[0].offer_alpn",
        [
            '"offer_alpn" applies only to a route that terminates TLS',
            'this route says action = "passthrough"',
        ],
        id="offer-alpn-on-an-explicit-passthrough-route",
    ),
    pytest.param(
        _sni(route_keys='action = "decrypt"\nbackend = "web"\n'),
        "listener.edge.route[0].action",
        ['expected one of "passthrough", "terminate", got "decrypt"'],
        id="unknown-action",
    ),
    pytest.param(
        _tls('certificates = ["site.pem"]\n'),
        "listener.edge",
        ['missing the target: write backend = "<a [[backend]] name>"', "or add [[listener.route]] tables"],
        id="tls-neither-backend-nor-routes",
    ),
    pytest.param(
        _tls(extra='[[listener.route]]\nbackend = "web"\n'),
        "listener.edge",
        ['expected either backend = "<name>"', "or [[listener.route]] tables", "got both"],
        id="tls-both-backend-and-routes",
    ),
    pytest.param(
        _tls('backend = "web"\n'),
        "listener.edge",
        ['missing required key "certificates"'],
        id="tls-without-certificates",
    ),
    pytest.param(
        _tls('certificates = ["site.pem"]\nbackend = "wbe"\n'),
        "listener.edge.backend",
        ['no backend named "wbe"', 'did you mean "web"'],
        id="tls-unknown-backend",
    ),
    pytest.param(
        _tls('certificates = ["site.pem"]\n', '[[listener.route]]\nbackend = "apii"\n'),
        "listener.edge.route[0].backend",
        ['no backend named "apii"', 'did you mean "api"'],
        id="tls-route-unknown-backend",
    ),
    pytest.param(
        _tls(extra='cert = "site.pem"\n'),
        "listener.edge",
        ['unknown key "cert"', "it belongs in a listener's certificates = [{ cert ="],
        id="cert-on-a-tls-listener",
    ),
    pytest.param(
        _tls() + 'tls = { ca = "missing-ca.pem" }\n',
        "backend.api.tls.ca",
        ["missing-ca.pem: no such file", "a relative path is taken from the configuration file's directory"],
        id="backend-ca-missing",
    ),
    pytest.param(
        _tls() + 'tls = { ca = "garbage.txt" }\n',
        "backend.api.tls.ca",
        ["garbage.txt: not a PEM file of CA certificates"],
        id="backend-ca-not-pem",
    ),
    pytest.param(
        _tls() + 'tls = { verify = false, ca = "ca.pem" }\n',
        "backend.api.tls.ca",
        ['"ca" has no use with verify = false', "remove ca, or set verify = true"],
        id="backend-verify-false-with-ca",
    ),
    pytest.param(
        _tls() + "tls = { verfy = false }\n",
        "backend.api.tls",
        ['unknown key "verfy"', 'did you mean "verify"'],
        id="backend-tls-unknown-key",
    ),
    pytest.param(
        _tls() + 'tls = "yes"\n',
        "backend.api.tls",
        ["expected true, false or a table like { verify = true", 'got "yes"'],
        id="backend-tls-not-a-table",
    ),
    pytest.param(
        _tls() + 'tls = { server_name = "{name}" }\n',
        "backend.api.tls.server_name",
        [
            'expected a DNS name, an IP address or "{sni}"',
            'got "{name}"',
            'the only placeholder here is "{sni}"',
        ],
        id="backend-server-name-placeholder",
    ),
    pytest.param(
        _tls() + 'tls = { server_name = "bad name" }\n',
        "backend.api.tls.server_name",
        ['expected a DNS name, an IP address or "{sni}"', 'got "bad name"'],
        id="backend-server-name-invalid",
    ),
    pytest.param(
        _tls() + "verify = false\n",
        "backend.api",
        ['unknown key "verify"', "(it belongs in a backend's tls = { ... })"],
        id="verify-outside-the-tls-table",
    ),
]


@pytest.mark.parametrize(("text", "key", "words"), BROKEN)
def test_broken_tls_config_is_reported(certs: Path, text: str, key: str, words: list[str]) -> None:
    issues = _issues(certs, text)
    assert len(issues) == 1, issues
    ((found_key, message),) = issues
    assert found_key == key
    for word in words:
        assert word in message, message


def test_file_problems_are_reported_together_in_document_order(certs: Path) -> None:
    text = (
        _sni('certificates = ["site.pem", "missing.pem", { cert = "api.crt", key = "other.key" }]\n')
        + 'tls = { ca = "nothing.pem" }\n'
    )
    issues = _issues(certs, text)
    assert [key for key, _ in issues] == [
        "listener.edge.certificates[1]",
        "listener.edge.certificates[2]",
        "backend.api.tls.ca",
    ]
    assert issues[0][1].startswith(f"{certs / 'missing.pem'}: no such file")


def test_files_are_checked_at_every_load(certs: Path) -> None:
    """A reload (load_dict of the same document) finds a file that broke since the first load."""
    config = _load(certs, SNI)
    (certs / "api.key").unlink()
    with pytest.raises(ConfigError) as info:
        load_dict(config.raw, config.source)  # type: ignore[attr-defined]
    assert [issue.key for issue in info.value.issues] == ["listener.edge.certificates[1]"]


# ---------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------


def _block(plan: str, title: str) -> list[str]:
    lines = plan.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(title))
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


def test_plan_shows_certificates_and_terminating_routes(certs: Path) -> None:
    plan = render_plan(_load(certs, SNI + 'tls = { ca = "ca.pem", server_name = "{sni}" }\n'))  # type: ignore[arg-type]
    edge = _block(plan, "listener edge (mode sni)")
    assert f"  certificates     {certs / 'site.pem'} (app.example.com, *.example.com; until " in "\n".join(
        edge
    )
    assert edge[2].endswith("; default)")
    assert (
        edge[3]
        == f"                   {certs / 'api.crt'}, key {certs / 'api.key'} (api.internal; until "
        + (edge[3].rsplit("until ", 1)[1])
    )
    assert "  tls min version  1.2" in edge
    assert "  offer alpn       h2, http/1.1" in edge
    assert [line for line in edge if line.startswith("  route ")] == [
        "  route app   app.example.com  -> terminate, backend web  alpn offer h2,http/1.1",
        "  route api   api.internal     -> terminate, backend api  alpn offer http/1.1",
        "  route rest  (default)        -> backend web",
    ]
    assert "  tls              off" in _block(plan, "backend web")
    assert f"  tls              verify with {certs / 'ca.pem'}, server name the client's name ({{sni}})" in (
        _block(plan, "backend api")
    )


def test_plan_of_tls_mode(certs: Path) -> None:
    plan = render_plan(_load(certs, TLS_BACKEND + "tls = { verify = false }\n"))  # type: ignore[arg-type]
    front = _block(plan, "listener front (mode tls)")
    assert "  backend          web" in front
    assert "  tls min version  1.3" in front and "  offer alpn       http/1.1" in front
    assert not any(line.startswith("  route ") for line in front)
    assert "  tls              no verification, server name each server's host" in _block(plan, "backend api")

    plan = render_plan(_load(certs, TLS_ROUTES + 'tls = { server_name = "api.internal" }\n'))  # type: ignore[arg-type]
    front = _block(plan, "listener front (mode tls)")
    assert not any(line.startswith("  backend ") for line in front)
    assert "  offer alpn       none" in front
    assert [line for line in front if line.startswith("  route ")] == [
        "  route route[0]  api.internal   -> terminate, backend api  alpn offer h2",
        "  route route[1]  *.example.com  -> passthrough, backend web",
        "  route route[2]  (default)      -> terminate, backend web",
    ]
    assert "  tls              verify with system CAs, server name api.internal" in _block(
        plan, "backend api"
    )
