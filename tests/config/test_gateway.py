"""The gateway listener's configuration: keys from files or the environment, policy, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from portway.config.load import load_file
from portway.config.model import SourceLimit
from portway.config.plan import render_plan
from portway.errors import ConfigError
from portway.proto import gateway


def _write(tmp_path: Path, listener: str, *, keyring: bool = True, secrets: bool = True) -> Path:
    if keyring:
        (tmp_path / "gw.keyring").write_text(gateway.Keyring.new_line() + "\n")
    if secrets:
        (tmp_path / "v1.secrets").write_text("a passphrase that is long enough\n")
    path = tmp_path / "portway.toml"
    path.write_text(
        '[admin]\nlisten = "off"\n\n[[listener]]\nname = "gw"\nmode = "gateway"\nbind = "127.0.0.1:4043"\n'
        + listener
    )
    return path


def _issues(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_file(path)
    return [(issue.key, issue.message) for issue in info.value.issues]


def test_a_full_gateway_resolves(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'keyring_file = "gw.keyring"\nsecrets_file = "v1.secrets"\nallow = ["10.0.0.0/8:22"]\n'
        'handshake_timeout = "2s"\nline_limit = 1024\nsource_limit = { burst = 5 }\n',
    )
    config = load_file(path)
    listener = config.listener("gw")
    spec = listener.gateway
    assert spec is not None
    assert spec.keyring_file == str(tmp_path / "gw.keyring")
    assert spec.secrets_file == str(tmp_path / "v1.secrets")
    assert spec.accept_v1 and spec.v1_digest == "md5"
    assert spec.allow == ("10.0.0.0/8:22",)
    assert listener.sniff_timeout == 2.0 and spec.line_limit == 1024
    assert spec.source_limit == SourceLimit(rate=1.0, burst=5, ban=60.0)
    assert (spec.connect_timeout, spec.retries) == (5.0, 2)  # from [defaults]
    plan = render_plan(config)
    assert "handshake timeout  2s" in plan
    assert f"v2 keyring         {tmp_path / 'gw.keyring'}" in plan
    assert "source limit       burst 5, refill 1/s, then refused for 1m" in plan
    keyline = (tmp_path / "gw.keyring").read_text().split()[1]
    assert keyline not in plan  # the plan says where keys are, never what they are


def test_v2_only_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_KEYS", gateway.Keyring.new_line())
    path = _write(tmp_path, 'keyring_env = "GW_KEYS"\nallow = ["*.db.internal:5432"]\n', keyring=False)
    spec = load_file(path).listener("gw").gateway
    assert spec is not None and spec.keyring_env == "GW_KEYS" and not spec.accept_v1


@pytest.mark.parametrize(
    ("listener", "key", "words"),
    [
        ('allow = ["10.0.0.0/8"]\n', "listener.gw", "a gateway needs keys"),
        ('keyring_file = "gw.keyring"\nallow = []\n', "listener.gw.allow", "at least one allow entry"),
        ('keyring_file = "gw.keyring"\n', "listener.gw", 'missing required key "allow"'),
        (
            'keyring_file = "gw.keyring"\nkeyring_env = "X"\nallow = ["10.0.0.0/8"]\n',
            "listener.gw.keyring_env",
            "either keyring_file or keyring_env",
        ),
        (
            'keyring_file = "gw.keyring"\naccept_v1 = true\nallow = ["10.0.0.0/8"]\n',
            "listener.gw.accept_v1",
            "needs the v1 passphrases",
        ),
        (
            'keyring_file = "gw.keyring"\nsniff_timeout = "1s"\nallow = ["10.0.0.0/8"]\n',
            "listener.gw.sniff_timeout",
            "handshake_timeout",
        ),
        (
            'keyring_file = "nope.keyring"\nallow = ["10.0.0.0/8"]\n',
            "listener.gw.keyring_file",
            "no such file",
        ),
        (
            'keyring_env = "PORTWAY_TEST_UNSET_VARIABLE"\nallow = ["10.0.0.0/8"]\n',
            "listener.gw.keyring_env",
            "PORTWAY_TEST_UNSET_VARIABLE is not set",
        ),
        ('keyring_file = "gw.keyring"\nallow = ["10.0.0.1/8"]\n', "listener.gw.allow[0]", "no host bits"),
        (
            'keyring_file = "gw.keyring"\nallow = ["10.0.0.0/8"]\nline_limit = 10\n',
            "listener.gw.line_limit",
            "64",
        ),
        (
            'keyring_file = "gw.keyring"\nallow = ["10.0.0.0/8"]\nv1_digest = "sha1"\n',
            "listener.gw.v1_digest",
            '"md5"',
        ),
    ],
)
def test_gateway_errors(tmp_path: Path, listener: str, key: str, words: str) -> None:
    issues = _issues(_write(tmp_path, listener))
    assert any(k == key and words in message for k, message in issues), issues


def test_a_broken_keyring_names_the_line_not_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'keyring_file = "gw.keyring"\nallow = ["10.0.0.0/8"]\n')
    (tmp_path / "gw.keyring").write_text("# keys\n7 c2hvcnQ=\n")
    issues = _issues(path)
    assert issues[0][0] == "listener.gw.keyring_file"
    assert "line 2" in issues[0][1] and "c2hvcnQ=" not in issues[0][1]
