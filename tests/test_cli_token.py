"""``portway token encrypt|decrypt|keygen`` as a user runs them: a subprocess, keys in files and env.

v1 tokens are checked against the real ``openssl enc`` both ways. Skipped as a whole while
:mod:`portway.proto.gateway` (the token codec) is not importable.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

gateway = pytest.importorskip(
    "portway.proto.gateway", reason="portway.proto.gateway (the token codec) is not importable yet"
)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "k7Qz-pW2vX9mL4tR8nB3yH6c"  # strong enough for weak_secret, fake enough for a test
KEYRING_LINE = "7 " + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="  # kid 7, 32 bytes of text

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is not installed"
)


def portway(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m portway ARGS``; the result, with the secret checked absent from all output."""
    r = subprocess.run(
        [sys.executable, "-m", "portway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        timeout=60,
    )
    assert SECRET not in r.stdout + r.stderr, "the secret was printed"
    assert KEYRING_LINE.split()[1] not in r.stdout + r.stderr, "the key was printed"
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.secrets"
    path.write_text(f"# v1 passphrases, the first one encrypts\n{SECRET}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.keyring"
    path.write_text(f"{KEYRING_LINE}\n")
    path.chmod(0o600)
    return path


def fields(stdout: str) -> dict[str, str]:
    """``decrypt`` output as ``{"version": "2", "address": ..., "key id": ...}``."""
    out = {}
    for line in stdout.splitlines():
        name, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        out[name] = value
    return out


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["10.0.0.5:22", "db.internal:5432", "[2001:db8::1]:443"])
def test_v1_round_trip_with_a_secret_file(secret_file: Path, address: str) -> None:
    enc = portway("token", "encrypt", "--v1", "--secret-file", str(secret_file), address)
    assert enc.returncode == 0, enc.stderr
    token = enc.stdout
    assert token.startswith("U2FsdGVkX1") and token.endswith("\n") and token.count("\n") == 1
    assert enc.stderr == ""  # a strong secret in a private file: no warning
    dec = portway("token", "decrypt", "--secret-file", str(secret_file), token.strip())
    assert dec.returncode == 0, dec.stderr
    assert fields(dec.stdout) == {"version": "1", "address": address}


def test_v1_round_trip_with_the_secret_in_an_environment_variable() -> None:
    env = {"GW_SECRET": SECRET}
    enc = portway("token", "encrypt", "--v1", "--secret-env", "GW_SECRET", "db.internal:5432", env=env)
    assert enc.returncode == 0, enc.stderr
    dec = portway("token", "decrypt", "--secret-env", "GW_SECRET", "-", env=env, stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert fields(dec.stdout)["address"] == "db.internal:5432"


def test_v2_round_trip_with_a_keyring_file(keyring_file: Path) -> None:
    before = time.time()
    enc = portway("token", "encrypt", "--v2", "--keyring-file", str(keyring_file), "db.internal:5432")
    assert enc.returncode == 0, enc.stderr
    token = enc.stdout.strip()
    assert token.startswith("v2.")
    dec = portway("token", "decrypt", "--keyring-file", str(keyring_file), token)
    assert dec.returncode == 0, dec.stderr
    got = fields(dec.stdout)
    assert got["version"] == "2" and got["address"] == "db.internal:5432" and got["key id"] == "7"
    assert got["not before"] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in 29d 23h\)", got["expires"]), got
    # The same token decrypts in the library, with the default lifetime of 30 days.
    keyring = gateway.Keyring.parse(keyring_file.read_text())
    assert str(gateway.v2_decrypt(token.encode(), keyring)) == "db.internal:5432"
    assert str(gateway.v2_decrypt(token.encode(), keyring, now=before + 29.9 * 86400)) == "db.internal:5432"
    with pytest.raises(gateway.TokenError, match="expired"):
        gateway.v2_decrypt(token.encode(), keyring, now=time.time() + 30 * 86400 + 5)


def test_v2_round_trip_with_the_keyring_in_an_environment_variable_and_a_window() -> None:
    env = {"GW_KEYRING": KEYRING_LINE}
    enc = portway(
        "token", "encrypt", "--v2", "--keyring-env", "GW_KEYRING", "--not-before", "2h", "--expires", "1d",
        "10.1.2.3:80", env=env,
    )  # fmt: skip
    assert enc.returncode == 0, enc.stderr
    keyring = gateway.Keyring.parse(KEYRING_LINE)
    now = time.time()
    assert str(gateway.v2_decrypt(enc.stdout.strip().encode(), keyring, now=now + 3 * 3600)) == "10.1.2.3:80"
    with pytest.raises(gateway.TokenError, match="expired"):
        gateway.v2_decrypt(enc.stdout.strip().encode(), keyring, now=now + 2 * 3600 + 86400 + 5)
    dec = portway("token", "decrypt", "--keyring-env", "GW_KEYRING", "-", env=env, stdin=enc.stdout)
    assert dec.returncode == 1
    assert dec.stderr.startswith("error: the token is not valid yet: it starts working ")
    assert "(in 1h 59m" in dec.stderr and "(key id 7)" in dec.stderr


def test_v2_with_an_absolute_expiry(keyring_file: Path) -> None:
    enc = portway(
        "token",
        "encrypt",
        "--v2",
        "--keyring-file",
        str(keyring_file),
        "--expires",
        "2099-01-31T09:00Z",
        "a.b:1",
    )
    assert enc.returncode == 0, enc.stderr
    dec = portway("token", "decrypt", "--keyring-file", str(keyring_file), enc.stdout.strip())
    assert fields(dec.stdout)["expires"].startswith("2099-01-31T09:00:00Z (in ")


# --- openssl interoperability -------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_a_v1_token_decrypts_with_openssl(secret_file: Path, digest: str) -> None:
    enc = portway(
        "token", "encrypt", "--v1", "--digest", digest, "--secret-file", str(secret_file), "10.0.0.5:22"
    )
    assert enc.returncode == 0, enc.stderr
    r = subprocess.run(
        ["openssl", "enc", "-d", "-aes-256-cbc", "-a", "-A", "-md", digest, "-pass", "env:GW_SECRET"],
        input=enc.stdout.encode(),
        capture_output=True,
        env={**os.environ, "GW_SECRET": SECRET},
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"10.0.0.5:22"


@needs_openssl
@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_a_token_made_by_openssl_decrypts_with_portway(secret_file: Path, digest: str) -> None:
    r = subprocess.run(
        ["openssl", "enc", "-e", "-aes-256-cbc", "-a", "-A", "-md", digest, "-pass", "env:GW_SECRET"],
        input=b"db.internal:5432",
        capture_output=True,
        env={**os.environ, "GW_SECRET": SECRET},
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    token = r.stdout.decode().strip()
    dec = portway("token", "decrypt", "--digest", digest, "--secret-file", str(secret_file), token)
    assert dec.returncode == 0, dec.stderr
    assert fields(dec.stdout) == {"version": "1", "address": "db.internal:5432"}
    wrong = "sha256" if digest == "md5" else "md5"
    dec = portway("token", "decrypt", "--digest", wrong, "--secret-file", str(secret_file), token)
    assert dec.returncode == 1 and "invalid token" in dec.stderr


# --- secrets never on the command line ------------------------------------------------------------


def _token_parsers() -> dict[str, argparse.ArgumentParser]:
    from portway.cli import _parser

    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return subparsers(subparsers(_parser())["token"])


@pytest.mark.parametrize("action", ["encrypt", "decrypt", "keygen"])
def test_no_option_takes_a_secret_or_key_itself(action: str) -> None:
    parser = _token_parsers()[action]
    for option in parser._actions:
        for name in option.option_strings:
            if re.search(r"secret|key|pass", name) and name != "--kid":
                assert name.endswith(("-file", "-env")), f"{action} {name} would take key material"
                assert option.metavar in ("FILE", "VAR"), (name, option.metavar)


def test_an_option_with_the_secret_itself_is_refused() -> None:
    for option in ("--secret", "--passphrase", "--key", "--pass"):
        r = portway("token", "encrypt", "--v1", option, "x" * 20, "a.b:1")
        assert r.returncode == 2, (option, r.stdout)
        assert r.stdout == ""


# --- clear errors ------------------------------------------------------------------------------------


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.secrets"
    r = portway("token", "encrypt", "--v1", "--secret-file", str(missing), "a.b:1")
    assert r.returncode == 1
    assert r.stderr == f"error: --secret-file {missing}: no such file\n"
    assert r.stdout == ""


def test_an_unset_variable_is_named() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PORTWAY_NO_SUCH_VAR"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "token",
            "encrypt",
            "--v2",
            "--keyring-env",
            "PORTWAY_NO_SUCH_VAR",
            "a:1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert r.returncode == 1
    assert (
        "error: --keyring-env PORTWAY_NO_SUCH_VAR: the environment variable PORTWAY_NO_SUCH_VAR is not set"
        in r.stderr
    )


def test_an_invalid_v1_token_is_exit_1_with_a_clear_message(secret_file: Path) -> None:
    r = portway("token", "decrypt", "--secret-file", str(secret_file), "U2FsdGVkX1+this/is/not/a/token==")
    assert r.returncode == 1
    assert r.stderr.startswith(
        "error: invalid token: it does not decrypt to an address with the 1 secret from "
    )
    assert r.stdout == ""


def test_a_v2_token_from_another_keyring_is_refused(tmp_path: Path, keyring_file: Path) -> None:
    other = tmp_path / "other.keyring"
    other.write_text(gateway.Keyring.new_line(7) + "\n")  # the same key id, another key
    other.chmod(0o600)
    token = portway("token", "encrypt", "--v2", "--keyring-file", str(other), "a.b:1").stdout.strip()
    r = portway("token", "decrypt", "--keyring-file", str(keyring_file), token)
    assert r.returncode == 1
    assert r.stderr.startswith("error: invalid token: it does not verify with the keyring ")
    other.write_text(gateway.Keyring.new_line(8) + "\n")
    token = portway("token", "encrypt", "--v2", "--keyring-file", str(other), "a.b:1").stdout.strip()
    r = portway("token", "decrypt", "--keyring-file", str(keyring_file), token)
    assert r.returncode == 1
    assert "it names key id 8, which" in r.stderr and "does not hold (it holds 7)" in r.stderr


def test_an_expired_v2_token_says_when_it_expired(keyring_file: Path) -> None:
    keyring = gateway.Keyring.parse(keyring_file.read_text())
    now = time.time()
    token = gateway.v2_encrypt("a.b:1", keyring, expires=now - 3600, now=now - 7200).decode()
    r = portway("token", "decrypt", "--keyring-file", str(keyring_file), token)
    assert r.returncode == 1
    assert re.match(r"error: the token expired: \S+Z \((59m \d+s|1h 0m) ago\) \(key id 7\)", r.stderr), (
        r.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--v1", "a.b:1"], "error: --v1 needs the secret: give --secret-file FILE or --secret-env VAR"),
        (["--v2", "a.b:1"], "error: --v2 needs a keyring: give --keyring-file FILE or --keyring-env VAR"),
        (["--v1", "--expires", "1d", "a.b:1"], "error: --expires is for v2 tokens; v1 tokens never expire"),
        (["--v2", "--keyring-env", "R", "--digest", "md5", "a:1"], "error: --digest is for v1 tokens"),
        (
            ["--v2", "--keyring-env", "R", "web"],
            'error: ADDRESS: expected host:port or [ipv6]:port, got "web"',
        ),
        (
            ["--v2", "--keyring-env", "R", "--expires", "30", "a:1"],
            '--expires: expected a duration like "30d"',
        ),
        (["--v2", "--keyring-env", "R", "--expires", "2001-01-01", "a:1"], "is in the past"),
        (["a.b:1"], "one of the arguments --v2 --v1 is required"),
    ],
)
def test_encrypt_usage_errors(args: list[str], message: str) -> None:
    r = portway("token", "encrypt", *args, env={"R": KEYRING_LINE})
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert r.stdout == ""


def test_a_weak_v1_secret_and_a_readable_file_are_warned_about(tmp_path: Path) -> None:
    weak = tmp_path / "weak.secrets"
    weak.write_text("hunter2\n")
    weak.chmod(0o644)
    r = portway("token", "encrypt", "--v1", "--secret-file", str(weak), "a.b:1")
    assert r.returncode == 0  # a warning, not a refusal: the gateway decides what it accepts
    assert r.stdout.startswith("U2FsdGVkX1")
    assert f"warning: {weak}: the v1 secret is only 7 bytes long" in r.stderr
    assert f"warning: {weak} is readable by other users" in r.stderr
    assert "hunter2" not in r.stderr


def test_decrypt_without_the_needed_keys_says_which(secret_file: Path, keyring_file: Path) -> None:
    r = portway("token", "decrypt", "--secret-file", str(secret_file), "v2.AAAA")
    assert r.returncode == 2 and "this is a v2 token: give its keyring" in r.stderr
    r = portway("token", "decrypt", "--keyring-file", str(keyring_file), "U2FsdGVkX1abc")
    assert r.returncode == 2 and "this is a v1 token: give its secret" in r.stderr
    r = portway("token", "decrypt", "--secret-file", str(secret_file), "-", stdin="")
    assert r.returncode == 1 and "the token is empty" in r.stderr


# --- keygen ------------------------------------------------------------------------------------------


def test_keygen_prints_a_commented_line_that_parses_as_a_keyring(tmp_path: Path) -> None:
    r = portway("token", "keygen", "--kid", "42")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("#") for line in lines[:-1]) and "keyring" in r.stdout
    keyring = gateway.Keyring.parse(r.stdout, source="keygen")
    assert list(keyring.keys) == [42] and keyring.current.kid == 42
    # Appending a second one makes a valid keyring file for encrypt, whose first key is current.
    path = tmp_path / "k"
    path.write_text(r.stdout + portway("token", "keygen", "--kid", "43").stdout)
    path.chmod(0o600)
    token = portway("token", "encrypt", "--v2", "--keyring-file", str(path), "a.b:1").stdout.strip()
    assert fields(portway("token", "decrypt", "--keyring-file", str(path), token).stdout)["key id"] == "42"


def test_keygen_makes_a_new_key_each_time_and_a_random_id_by_default() -> None:
    first, second = (portway("token", "keygen").stdout.splitlines()[-1] for _ in range(2))
    assert first != second
    assert re.fullmatch(r"\d{1,10} [A-Za-z0-9+/]{43}=", first)


def test_keygen_refuses_an_out_of_range_key_id() -> None:
    r = portway("token", "keygen", "--kid", "4294967296")
    assert r.returncode == 2
    assert "--kid: expected a key id from 0 to 4294967295" in r.stderr


@pytest.mark.parametrize("action", [[], ["encrypt"], ["decrypt"], ["keygen"]])
def test_help_teaches_with_examples(action: list[str]) -> None:
    r = portway("token", *action, "--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and "portway token" in r.stdout
