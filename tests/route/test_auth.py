"""Users files, password checks and the Basic proxy-auth header (portway.route.auth).

Hashes are made at cost 4 to keep the tests fast; the code treats every cost alike.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest

from portway.route.auth import (
    MAX_PASSWORD_BYTES,
    PROXY_AUTHENTICATE,
    Credentials,
    VerifyCache,
    decode_credential,
    hash_problem,
    parse_basic,
)

PASSWORD = "c0rrect-h0rse"


def bcrypt_hash(password: str, *, prefix: str = "$2b$") -> str:
    """A cost-4 bcrypt hash of ``password`` with the given ``$2?$`` prefix."""
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(4)).decode("ascii")
    return prefix + hashed.removeprefix("$2b$")


ALICE = bcrypt_hash(PASSWORD)
BOB = bcrypt_hash("bobs-password", prefix="$2y$")


def make(text: str, *, source: str = "users.htpasswd") -> Credentials:
    """Parse ``text`` with a cache of its own, so tests do not share remembered logins."""
    return Credentials.parse(text, source=source, cache=VerifyCache())


# --- parsing ---------------------------------------------------------------------------------------


def test_parse_good_file_with_comments_and_blank_lines() -> None:
    creds = make(f"# proxy users\n\nalice:{ALICE}\n   \n  # indented comment\r\nbob:{BOB}\r\ncarol:{ALICE}")
    assert creds.names == ("alice", "bob", "carol")
    assert len(creds) == 3
    assert "bob" in creds
    assert "dave" not in creds
    assert ALICE not in repr(creds)


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_parse_accepts_every_bcrypt_prefix(prefix: str) -> None:
    creds = make(f"alice:{bcrypt_hash(PASSWORD, prefix=prefix)}\n")
    assert creds.verify("alice", PASSWORD)


def test_parse_empty_file_has_no_users() -> None:
    creds = make("# nobody yet\n")
    assert len(creds) == 0
    assert not creds.verify("alice", PASSWORD)


def test_names_may_hold_spaces_and_unicode() -> None:
    creds = make(f"Zoë Smith:{ALICE}\n")
    assert creds.verify("Zoë Smith", PASSWORD)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"alice:{ALICE}\njust-a-name\n",
            'users.htpasswd: line 2: expected NAME:HASH (the htpasswd format), found no ":"',
        ),
        (f"# users\n:{ALICE}\n", "users.htpasswd: line 2: the user name before the colon is empty"),
        (
            f"alice:{ALICE}\n\nalice:{BOB}\n",
            'users.htpasswd: line 3: user "alice" is already listed on line 1',
        ),
        (f"alice :{ALICE}\n", "users.htpasswd: line 1: a name cannot start or end with whitespace"),
        (f"al\x01ice:{ALICE}\n", "users.htpasswd: line 1: a name cannot contain control characters"),
        (
            f"{'n' * 256}:{ALICE}\n",
            "users.htpasswd: line 1: the name is longer than 255 bytes (the SOCKS5 limit)",
        ),
    ],
)
def test_parse_errors_name_the_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        make(text)
    assert str(info.value) == expected
    assert ALICE not in str(info.value)
    assert BOB not in str(info.value)


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("$apr1$BD55zBAF$NkDBo9n7K8bapVXHcPwRL0", "Apache MD5 ($apr1$, htpasswd -m)"),
        ("{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=", "SHA-1 ({SHA}, htpasswd -s)"),
        ("u78tZoBIda.2o", "DES crypt (htpasswd -d)"),
        ("my plain password", "plaintext or an unknown scheme"),
        ("", "plaintext or an unknown scheme"),
        ("$6$saltsalt$" + "x" * 86, "SHA-512-crypt ($6$)"),
        ("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "MD5-crypt ($1$)"),
        ("$2b$04$tooshort", "a malformed bcrypt hash"),
        ("$2x$" + ALICE[4:], "bcrypt $2x$ (crypt_blowfish's compatibility variant for an old bug)"),
        ("$2b$99$" + ALICE[7:], "a bcrypt hash with a cost outside 4 to 31"),
    ],
)
def test_parse_refuses_other_schemes_without_echoing_them(stored: str, scheme: str) -> None:
    with pytest.raises(ValueError) as info:
        make(f"# users\nalice:{ALICE}\ncarol:{stored}\n", source="/etc/portway/users")
    message = str(info.value)
    assert message.startswith(
        f"only bcrypt hashes are accepted (htpasswd -B); line 3 of /etc/portway/users uses {scheme} "
        'for user "carol"'
    )
    assert "portway user add /etc/portway/users carol" in message
    if stored:
        assert stored not in message
    assert hash_problem(stored) == scheme


def test_constructor_checks_like_parse() -> None:
    with pytest.raises(ValueError, match=r'^users: user "alice" is listed twice$'):
        Credentials([("alice", ALICE), ("alice", BOB)])
    with pytest.raises(ValueError) as info:
        Credentials([("alice", "plaintext!")])
    assert "plaintext!" not in str(info.value)
    assert "only bcrypt hashes are accepted (htpasswd -B)" in str(info.value)


def test_load_reads_the_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text(f"alice:{ALICE}\n", encoding="utf-8")
    creds = Credentials.load(str(path), cache=VerifyCache())
    assert creds.source == str(path)
    assert creds.verify("alice", PASSWORD)

    path.write_text(f"alice:{ALICE}\nbob\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}: line 2: expected NAME:HASH"):
        Credentials.load(str(path))


def test_load_problems_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.htpasswd"
    with pytest.raises(ValueError, match=rf"^{missing}: no such file$"):
        Credentials.load(str(missing))
    latin = tmp_path / "latin.htpasswd"
    latin.write_bytes(b"zo\xeb:" + ALICE.encode() + b"\n")
    with pytest.raises(ValueError, match=rf"^{latin}: not UTF-8 text$"):
        Credentials.load(str(latin))
    with pytest.raises(ValueError, match=rf"^{tmp_path}: cannot read it"):
        Credentials.load(str(tmp_path))


# --- verify ----------------------------------------------------------------------------------------


def test_verify_right_wrong_and_unknown() -> None:
    creds = make(f"alice:{ALICE}\nbob:{BOB}\n")
    assert creds.verify("alice", PASSWORD)
    assert creds.verify("bob", "bobs-password")
    assert not creds.verify("alice", "bobs-password")
    assert not creds.verify("alice", "")
    assert not creds.verify("Alice", PASSWORD)  # names are case-sensitive
    assert not creds.verify("mallory", PASSWORD)


def test_unknown_user_costs_one_bcrypt_check_like_a_known_one() -> None:
    creds = make(f"alice:{ALICE}\n")
    assert not creds.verify("mallory", PASSWORD)
    assert creds.bcrypt_checks == 1
    assert not creds.verify("alice", "wrong")
    assert creds.bcrypt_checks == 2


def test_a_repeated_correct_login_is_served_from_the_cache() -> None:
    cache = VerifyCache()
    creds = Credentials.parse(f"alice:{ALICE}\n", source="users", cache=cache)
    assert not creds.verify_cached("alice", PASSWORD)  # nothing remembered yet
    assert creds.verify("alice", PASSWORD)
    assert creds.bcrypt_checks == 1
    assert len(cache) == 1
    assert creds.verify("alice", PASSWORD)
    assert creds.verify_cached("alice", PASSWORD)
    assert creds.bcrypt_checks == 1  # no second bcrypt check
    assert not creds.verify_cached("alice", "wrong")


def test_failures_are_never_cached() -> None:
    cache = VerifyCache()
    creds = Credentials.parse(f"alice:{ALICE}\n", source="users", cache=cache)
    for _ in range(3):
        assert not creds.verify("alice", "wrong")
        assert not creds.verify("mallory", "wrong")
    assert creds.bcrypt_checks == 6
    assert len(cache) == 0


def test_a_changed_hash_invalidates_the_cached_login() -> None:
    cache = VerifyCache()
    before = Credentials.parse(f"alice:{ALICE}\n", source="users", cache=cache)
    assert before.verify("alice", PASSWORD)
    # A reload: alice has a new password; the shared cache must not let the old one in.
    after = Credentials.parse(f"alice:{bcrypt_hash('new-password')}\n", source="users", cache=cache)
    assert not after.verify_cached("alice", PASSWORD)
    assert not after.verify("alice", PASSWORD)
    assert after.bcrypt_checks == 1
    assert after.verify("alice", "new-password")
    # A reload where alice's hash did not change keeps her login cached.
    again = Credentials.parse(f"alice:{ALICE}\n", source="users", cache=cache)
    assert again.verify("alice", PASSWORD)
    assert again.bcrypt_checks == 0


def test_removed_user_cannot_log_in_from_the_cache() -> None:
    cache = VerifyCache()
    before = Credentials.parse(f"alice:{ALICE}\n", source="users", cache=cache)
    assert before.verify("alice", PASSWORD)
    after = Credentials.parse("# alice left\n", source="users", cache=cache)
    assert not after.verify_cached("alice", PASSWORD)
    assert not after.verify("alice", PASSWORD)


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = VerifyCache(maxsize=2)
    users = {name: bcrypt_hash(f"{name}-pw") for name in ("a", "b", "c")}
    creds = Credentials(users.items(), source="users", cache=cache)
    assert creds.verify("a", "a-pw")
    assert creds.verify("b", "b-pw")
    assert creds.verify_cached("a", "a-pw")  # a is now the most recently used
    assert creds.verify("c", "c-pw")  # evicts b
    assert len(cache) == 2
    assert creds.verify_cached("a", "a-pw")
    assert creds.verify_cached("c", "c-pw")
    assert not creds.verify_cached("b", "b-pw")


def test_cache_holds_no_plain_password_digest() -> None:
    cache = VerifyCache()
    creds = Credentials.parse(f"alice:{ALICE}\n", source="users", cache=cache)
    assert creds.verify("alice", PASSWORD)
    assert "entries" not in repr(cache)
    plain_digest = hashlib.sha256(PASSWORD.encode()).digest()
    assert all(plain_digest not in entry for entry in cache._entries)


def test_passwords_longer_than_bcrypt_reads_fail_without_a_check() -> None:
    long_password = "x" * (MAX_PASSWORD_BYTES + 1)
    creds = make(f"alice:{ALICE}\n")
    assert not creds.verify("alice", long_password)
    assert not creds.verify_cached("alice", long_password)
    assert creds.bcrypt_checks == 0
    # 72 bytes exactly is fine; counted in UTF-8 bytes, not characters.
    exact = "é" * 36
    creds = make(f"alice:{bcrypt_hash(exact)}\n")
    assert creds.verify("alice", exact)
    assert not creds.verify("alice", exact + "x")


def test_unencodable_password_or_name_fails_without_raising() -> None:
    creds = make(f"alice:{ALICE}\n")
    assert not creds.verify("alice", "pa\udce9ss")
    assert not creds.verify_cached("alice", "pa\udce9ss")
    assert creds.bcrypt_checks == 0
    assert not creds.verify("al\udce9ice", PASSWORD)  # an unknown name: the dummy check
    assert creds.bcrypt_checks == 1


def test_password_with_a_nul_is_not_truncated() -> None:
    creds = make(f"alice:{bcrypt_hash('abc')}\n")
    assert not creds.verify("alice", "abc\x00def")


def test_apache_2y_form_of_a_bcrypt_hash_verifies() -> None:
    made = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode("ascii")
    assert made.startswith("$2b$")
    creds = make(f"alice:$2y${made[4:]}\n")
    assert creds.verify("alice", PASSWORD)
    assert not creds.verify("alice", PASSWORD + "!")


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) is not installed")
def test_a_hash_from_real_htpasswd_verifies(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    for name, password in (("alice", PASSWORD), ("zoë", "pässwörd with spaces")):
        subprocess.run(
            ["htpasswd", "-i", "-B", "-C", "4", *(["-c"] if name == "alice" else []), str(path), name],
            input=password.encode("utf-8"),
            check=True,
            capture_output=True,
            timeout=30,
        )
    assert path.read_text().count(":$2y$04$") == 2
    creds = Credentials.load(str(path), cache=VerifyCache())
    assert creds.names == ("alice", "zoë")
    assert creds.verify("alice", PASSWORD)
    assert creds.verify("zoë", "pässwörd with spaces")
    assert not creds.verify("zoë", "passwörd with spaces")


# --- Proxy-Authorization: Basic ---------------------------------------------------------------------


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"Basic {b64(b'alice:secret')}", ("alice", "secret")),
        (f"basic {b64(b'alice:secret')}", ("alice", "secret")),  # the scheme is case-insensitive
        (f"BASIC {b64(b'alice:secret')}", ("alice", "secret")),
        (f"  Basic   {b64(b'alice:secret')}  ", ("alice", "secret")),  # extra spaces around and between
        (f"Basic\t{b64(b'alice:secret')}", ("alice", "secret")),
        (f"Basic {b64(b'alice:se:cr:et')}", ("alice", "se:cr:et")),  # split at the FIRST colon
        (f"Basic {b64(b'alice:')}", ("alice", "")),  # empty password
        (f"Basic {b64(b':secret')}", ("", "secret")),  # empty user (verify refuses it)
        (f"Basic {b64('zoë:pässword'.encode())}", ("zoë", "pässword")),  # UTF-8
        (f"Basic {b64('zoë:pässword'.encode('latin-1'))}", ("zoë", "pässword")),  # latin-1 fallback
        (f"Basic {b64(b'alice')}", None),  # no colon
        (f"Basic {b64(b'')}", None),  # nothing at all
        ("Basic", None),
        ("Basic ", None),
        ("", None),
        ("Basic !!!notbase64", None),
        ("Basic YWxpY2U6cHc=", ("alice", "pw")),
        ("Basic YWxpY2U6cHc", None),  # padding missing: not strict base64
        ("Basic YWxpY2U6cHc==", None),  # too much padding
        ("Basic YWxpY2U6c2VjcmV0==", None),  # padding where none belongs
        ("Basic YWxpY2U6cHc=YQ==", None),  # data after the padding
        ("Basic =YWxpY2U6cHc", None),
        ("Basic YWxpY2U6cHc=\r\n", None),  # a line ending is not part of the value
        ("Basic YWxpY2U-cHc=", None),  # the URL-safe alphabet is not base64 here
        (f"Basic {b64(b'alice:secret')[:4]} {b64(b'alice:secret')[4:]}", None),  # a space inside
        (f"Basic {b64(b'alice:secret')} extra", None),
        (f"Bearer {b64(b'alice:secret')}", None),  # another scheme
        (f"Digest {b64(b'alice:secret')}", None),
        (f"Basicx {b64(b'alice:secret')}", None),
        ("Basic dXNlcjpwYXNz\u00e9", None),  # non-ASCII in the token
        ("Basic\u00a0YWxpY2U6cHc=", None),  # only spaces and tabs separate
        ("Ba\u017fic YWxpY2U6cHc=", None),  # no Unicode case folding of the scheme
    ],
)
def test_parse_basic(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


def test_parse_basic_then_verify() -> None:
    creds = make(f"alice:{ALICE}\n")
    parsed = parse_basic(f"Basic {b64(f'alice:{PASSWORD}'.encode())}")
    assert parsed is not None
    assert creds.verify(*parsed)


def test_decode_credential_utf8_then_latin1() -> None:
    assert decode_credential("zoë".encode()) == "zoë"
    assert decode_credential("zoë".encode("latin-1")) == "zoë"
    assert decode_credential(b"\xff\xfe") == "ÿþ"


def test_proxy_authenticate_header() -> None:
    assert PROXY_AUTHENTICATE == 'Basic realm="portway", charset="UTF-8"'
