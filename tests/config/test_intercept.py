"""TLS interception on an http-proxy listener: the ``intercept*``, ``har`` and ``pinning*`` keys,
the files checked at load time, the runtime objects, and the plan."""

from __future__ import annotations

import os
import pickle
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from portway.config.load import load_file
from portway.config.model import Config, InterceptSpec
from portway.config.plan import render_plan
from portway.errors import ConfigError
from portway.net.mitmca import CertificateAuthority
from portway.runtime import Runtime

HEAD = '[admin]\nlisten = "off"\n\n'
PROXY = '[[listener]]\nname = "proxy"\nmode = "http-proxy"\nbind = "127.0.0.1:0"\n'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory of its own, so that the default ``~/.portway/ca`` is under tmp_path."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A CA made as ``portway ca init --dir <tmp_path>/ca`` would."""
    directory = tmp_path / "ca"
    CertificateAuthority.create(directory)
    return directory


def _write(folder: Path, keys: str, extra: str = "") -> Path:
    path = folder / "portway.toml"
    path.write_text(HEAD + PROXY + keys + extra)
    return path


def _issues(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_file(path)
    for issue in info.value.issues:
        assert issue.file == str(path)
        assert "pydantic" not in issue.message and "Value error" not in issue.message
    return [(issue.key, issue.message) for issue in info.value.issues]


def test_a_full_interception_loads(tmp_path: Path, ca_dir: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "origins.pem"))
    (tmp_path / "logs").mkdir()
    path = _write(
        tmp_path,
        'intercept = ["Example.com", "*.example.org", "192.0.2.1"]\nintercept_ca = "ca"\n'
        'intercept_origin_ca = "origins.pem"\nhar = "logs/capture.har"\n'
        'pinning = "passthrough"\npinning_ttl = "30m"\n',
    )
    config = load_file(path)
    proxy = config.listener("proxy").http_proxy
    assert proxy is not None
    assert proxy.intercept == InterceptSpec(
        patterns=("Example.com", "*.example.org", "192.0.2.1"),
        ca=str(ca_dir),  # relative to the file's directory
        origin_ca=str(tmp_path / "origins.pem"),
        har=str(tmp_path / "logs" / "capture.har"),
        pinning="passthrough",
        pinning_ttl=1800.0,
    )
    assert pickle.loads(pickle.dumps(config)) == config  # the spec stays plain data

    runtime = Runtime(config, 1)
    interception = runtime.intercepts["proxy"]
    assert interception.ca.directory == str(ca_dir)
    assert interception.har == str(tmp_path / "logs" / "capture.har")
    assert (interception.pinning, interception.pinning_ttl) == ("passthrough", 1800.0)
    assert interception.should_intercept("example.com", 0.0)
    assert interception.should_intercept("a.b.example.org", 0.0)
    assert not interception.should_intercept("example.org", 0.0)
    origin = interception.origin_context
    assert origin.verify_mode == ssl.CERT_REQUIRED and origin.check_hostname
    assert origin.minimum_version == ssl.TLSVersion.TLSv1_2
    assert origin.cert_store_stats()["x509_ca"] >= 1  # origins.pem, besides whatever the system has

    lines = render_plan(config).splitlines()
    assert "  intercept        Example.com, *.example.org, 192.0.2.1" in lines
    shown_ca = f"  intercept ca     {ca_dir} (Portway interception CA; until "
    assert any(line.startswith(shown_ca) for line in lines)
    assert f"  origin trust     system CAs + {tmp_path / 'origins.pem'}" in lines
    assert f"  har              {tmp_path / 'logs' / 'capture.har'}" in lines
    assert "  pinning          passthrough for 30m" in lines


def test_defaults_when_omitted(tmp_path: Path, home: Path) -> None:
    config = load_file(_write(tmp_path, ""))  # no CA anywhere: none is needed
    proxy = config.listener("proxy").http_proxy
    assert proxy is not None and proxy.intercept is None
    assert Runtime(config, 1).intercepts == {}
    assert "  intercept        off" in render_plan(config).splitlines()

    CertificateAuthority.create(home / ".portway" / "ca")
    config = load_file(_write(tmp_path, 'intercept = ["*"]\n'))
    proxy = config.listener("proxy").http_proxy
    assert proxy is not None
    assert proxy.intercept == InterceptSpec(
        patterns=("*",),
        ca=str(home / ".portway" / "ca"),  # ~/.portway/ca, where `portway ca init` puts it
        origin_ca=None,
        har=None,
        pinning="log",
        pinning_ttl=3600.0,
    )
    lines = render_plan(config).splitlines()
    assert "  origin trust     system CAs" in lines
    assert "  har              off" in lines and "  pinning          log" in lines


def test_an_empty_list_intercepts_nothing(tmp_path: Path, home: Path) -> None:
    config = load_file(_write(tmp_path, "intercept = []\n"))
    proxy = config.listener("proxy").http_proxy
    assert proxy is not None and proxy.intercept is None


def test_a_missing_ca_names_the_key_and_the_fix(tmp_path: Path, home: Path) -> None:
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["example.com"]\nintercept_ca = "nowhere"\n'))
    assert key == "listener.proxy.intercept_ca"
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    assert f"`portway ca init --dir {tmp_path / 'nowhere'}`" in message

    # The default directory, not written, is reported at the same key.
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["example.com"]\n'))
    assert key == "listener.proxy.intercept_ca"
    assert f"portway ca init --dir {home / '.portway' / 'ca'}" in message


def test_a_directory_without_a_ca(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["*"]\nintercept_ca = "empty"\n'))
    assert key == "listener.proxy.intercept_ca"
    assert f"{tmp_path / 'empty'} holds no ca.pem" in message and "portway ca init --dir" in message


def test_a_ca_without_its_key(tmp_path: Path, ca_dir: Path) -> None:
    (ca_dir / "ca-key.pem").unlink()
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\n'))
    assert key == "listener.proxy.intercept_ca"
    assert f"{ca_dir / 'ca-key.pem'}: no such file" in message and "--force" in message


def test_a_ca_key_open_to_others(tmp_path: Path, ca_dir: Path) -> None:
    os.chmod(ca_dir / "ca-key.pem", 0o644)
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\n'))
    assert key == "listener.proxy.intercept_ca"
    assert f"chmod 600 {ca_dir / 'ca-key.pem'}" in message


def test_a_ca_that_is_not_pem(tmp_path: Path, ca_dir: Path) -> None:
    (ca_dir / "ca.pem").write_text("not a certificate\n")
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\n'))
    assert key == "listener.proxy.intercept_ca"
    assert "not a PEM certificate" in message and "portway ca init --dir" in message


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        (
            'intercept = ["example.com", "example.com:443"]\n',
            "listener.proxy.intercept[1]",
            'got "example.com:443": leave out the port',
        ),
        ('intercept = ["a.*.example"]\n', "listener.proxy.intercept[0]", '"*" may only stand alone'),
        ("intercept = [443]\n", "listener.proxy.intercept[0]", "an IP address, got 443"),
        ('intercept = "*"\n', "listener.proxy.intercept", 'expected a list, got "*"'),
        (
            'intercept = ["*"]\npinning = "passthru"\n',
            "listener.proxy.pinning",
            'expected one of "log", "passthrough", got "passthru" (did you mean "passthrough"?)',
        ),
        (
            'intercept = ["*"]\npinning = "passthrough"\npinning_ttl = "soon"\n',
            "listener.proxy.pinning_ttl",
            'expected a duration like "5s"',
        ),
        (
            'intercept = ["*"]\npinning = "passthrough"\npinning_ttl = "0"\n',
            "listener.proxy.pinning_ttl",
            "expected a duration greater than 0",
        ),
        (
            'intercept = ["*"]\npinning_ttl = "1h"\n',
            "listener.proxy.pinning_ttl",
            'applies only with pinning = "passthrough"',
        ),
        (
            'pinning = "passthrough"\n',
            "listener.proxy.pinning",
            '"pinning" applies only to a listener that intercepts TLS',
        ),
        (
            'intercept = []\nintercept_ca = "ca"\n',
            "listener.proxy.intercept_ca",
            'list the destinations to intercept, as in intercept = ["*.example.com"], or remove it',
        ),
        ('har = "x.har"\n', "listener.proxy.har", '"har" applies only to a listener that intercepts TLS'),
        ('intercept = ["*"]\nintercept_ca = ""\n', "listener.proxy.intercept_ca", "a non-empty string"),
    ],
)
def test_bad_keys(tmp_path: Path, ca_dir: Path, keys: str, key: str, words: str) -> None:
    issues = _issues(_write(tmp_path, keys))
    assert [found for found, _ in issues] == [key], issues
    assert words in issues[0][1]


def test_a_har_directory_that_does_not_exist(tmp_path: Path, ca_dir: Path) -> None:
    [(key, message)] = _issues(
        _write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\nhar = "missing/capture.har"\n')
    )
    assert key == "listener.proxy.har"
    assert f"its directory {tmp_path / 'missing'} does not exist; create it" in message


def test_a_har_path_that_is_a_directory(tmp_path: Path, ca_dir: Path) -> None:
    [(key, message)] = _issues(_write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\nhar = "ca"\n'))
    assert key == "listener.proxy.har"
    assert f"{ca_dir} is a directory" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_har_directory_that_is_not_writable(tmp_path: Path, ca_dir: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    [(key, message)] = _issues(
        _write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\nhar = "ro/capture.har"\n')
    )
    assert key == "listener.proxy.har"
    assert "is not writable by this user" in message


def test_a_bad_origin_ca_file(tmp_path: Path, ca_dir: Path) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    path = _write(tmp_path, 'intercept = ["*"]\nintercept_ca = "ca"\nintercept_origin_ca = "garbage.pem"\n')
    [(key, message)] = _issues(path)
    assert key == "listener.proxy.intercept_origin_ca"
    assert f"{tmp_path / 'garbage.pem'}: not a PEM file of CA certificates" in message
    path.write_text(path.read_text().replace("garbage.pem", "absent.pem"))
    [(key, message)] = _issues(path)
    assert key == "listener.proxy.intercept_origin_ca" and "no such file" in message


def test_every_problem_is_reported_at_once(tmp_path: Path, home: Path) -> None:
    issues = _issues(_write(tmp_path, 'intercept = ["*"]\nintercept_ca = "nowhere"\nhar = "no/x.har"\n'))
    assert [key for key, _ in issues] == ["listener.proxy.intercept_ca", "listener.proxy.har"]


def _two_proxies(folder: Path, second_pinning: str = "passthrough") -> Config:
    text = (
        HEAD
        + PROXY
        + 'intercept = ["*"]\nintercept_ca = "ca"\npinning = "passthrough"\n'
        + '[[listener]]\nname = "other"\nmode = "http-proxy"\nbind = "127.0.0.1:0"\n'
        + f'intercept = ["*.test"]\nintercept_ca = "ca"\npinning = "{second_pinning}"\n'
    )
    path = folder / "portway.toml"
    path.write_text(text)
    return load_file(path)


def test_listeners_share_a_ca_and_reloads_keep_it(tmp_path: Path, ca_dir: Path) -> None:
    config = _two_proxies(tmp_path)
    first = Runtime(config, 1)
    ca = first.intercepts["proxy"].ca
    assert first.intercepts["other"].ca is ca  # one CA object, one leaf cache
    first.intercepts["proxy"].client_refused("pinned.test", 10.0, "unknown_ca")

    second = Runtime(_two_proxies(tmp_path), 2, previous=first)
    assert second.intercepts["proxy"].ca is ca  # unchanged CA: its minted leaves are kept
    assert second.intercepts["proxy"].pinned_hosts(11.0) == ["pinned.test"]  # and the pins
    assert not second.intercepts["proxy"].should_intercept("pinned.test", 11.0)
    assert second.intercepts["other"].pinned_hosts(11.0) == []  # pins belong to their listener

    CertificateAuthority.create(ca_dir, force=True)  # a new CA: clients may trust this one
    third = Runtime(_two_proxies(tmp_path), 3, previous=second)
    assert third.intercepts["proxy"].ca is not ca
    assert third.intercepts["proxy"].ca.certificate != ca.certificate
    assert third.intercepts["proxy"].pinned_hosts(11.0) == []


def test_check_prints_the_interception_and_fails_without_a_ca(tmp_path: Path, ca_dir: Path) -> None:
    """``portway check`` as a user runs it."""
    path = _write(tmp_path, 'intercept = ["*.example.org"]\nintercept_ca = "ca"\n')
    run = [sys.executable, "-m", "portway", "check", "-c", "portway.toml"]
    result = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "  intercept        *.example.org" in result.stdout
    assert f"  intercept ca     {ca_dir} (Portway interception CA; until " in result.stdout

    path.write_text(path.read_text().replace('intercept_ca = "ca"', 'intercept_ca = "gone"'))
    result = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "portway.toml: listener.proxy.intercept_ca: intercepting needs a CA" in result.stderr
    assert f"portway ca init --dir {tmp_path / 'gone'}" in result.stderr
