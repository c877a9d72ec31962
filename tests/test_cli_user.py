"""``portway user add|remove|list|check`` as an operator runs them: a subprocess, passwords on stdin.

Hashes are made with ``--cost 4`` to keep the tests fast.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portway.route.auth import Credentials, VerifyCache

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "tr0ub4dor&3-staple"
OTHER = "an0ther-passw0rd"


def portway(*args: str, stdin: str | bytes = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m portway ARGS`` with ``stdin`` piped in; checks no password or hash is printed."""
    r = subprocess.run(
        [sys.executable, "-m", "portway", *args],
        capture_output=True,
        input=stdin.encode("utf-8") if isinstance(stdin, str) else stdin,
        cwd=ROOT,
        timeout=60,
    )
    out = r.stdout.decode("utf-8") + r.stderr.decode("utf-8")
    for secret in (PASSWORD, OTHER, "$2y$", "$2b$"):
        assert secret not in out, f"{secret!r} was printed"
    assert "Traceback" not in out, out
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def load(path: Path) -> Credentials:
    return Credentials.load(str(path), cache=VerifyCache())


def add(path: Path, name: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return portway("user", "add", "--cost", "4", str(path), name, stdin=password + "\n")


# --- add ----------------------------------------------------------------------------------------------


def test_add_creates_the_file_0600_and_it_verifies(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    r = add(path, "alice")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'created {path} (mode 0600) with user "alice" (bcrypt, cost 4)\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("alice:$2y$04$")  # the form htpasswd -B writes
    assert text.endswith("\n")
    creds = load(path)
    assert creds.names == ("alice",)
    assert creds.verify("alice", PASSWORD)
    assert not creds.verify("alice", OTHER)
    assert [p.name for p in tmp_path.iterdir()] == ["users.htpasswd"]  # no temporary file left


def test_add_keeps_comments_blank_lines_and_other_users(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    assert add(path, "alice").returncode == 0
    alice_line = path.read_text()
    path.write_text(f"# proxy users, managed by hand\n\n{alice_line}   # indented comment\n")
    path.chmod(0o640)

    r = add(path, "bob", OTHER)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'added user "bob" to {path} (bcrypt, cost 4)\n'
    lines = path.read_text().splitlines()
    assert lines[:4] == [
        "# proxy users, managed by hand",
        "",
        alice_line.rstrip("\n"),
        "   # indented comment",
    ]
    assert lines[4].startswith("bob:$2y$04$")
    assert len(lines) == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its mode
    creds = load(path)
    assert creds.verify("alice", PASSWORD)
    assert creds.verify("bob", OTHER)


def test_add_replaces_a_password_in_place(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    for name in ("alice", "bob", "carol"):
        assert add(path, name).returncode == 0
    r = add(path, "bob", OTHER)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'set a new password for user "bob" in {path} (bcrypt, cost 4)\n'
    creds = load(path)
    assert creds.names == ("alice", "bob", "carol")  # same place in the file
    assert creds.verify("bob", OTHER)
    assert not creds.verify("bob", PASSWORD)


def test_add_appends_after_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("# no newline at the end")
    assert add(path, "alice").returncode == 0
    assert path.read_text().splitlines()[0] == "# no newline at the end"
    assert load(path).names == ("alice",)


def test_add_fixes_a_user_with_a_non_bcrypt_hash(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("carol:$apr1$BD55zBAF$NkDBo9n7K8bapVXHcPwRL0\n")
    r = portway("user", "list", str(path))
    assert r.returncode == 1
    assert "only bcrypt hashes are accepted (htpasswd -B); line 1 of" in r.stderr
    assert "NkDBo9n7K8bapVXHcPwRL0" not in r.stderr
    assert add(path, "carol").returncode == 0  # what the message suggests works
    assert load(path).verify("carol", PASSWORD)


def test_add_refuses_to_break_the_file(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    original = "alice:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n"
    path.write_text(original)
    path.chmod(0o600)
    r = portway("user", "add", "--cost", "4", str(path), "bob", stdin="")  # fails before reading stdin
    assert r.returncode == 1
    assert r.stderr.startswith("error: only bcrypt hashes are accepted (htpasswd -B); line 1 of ")
    assert r.stderr.rstrip().endswith(f"{path} was not changed")
    assert path.read_text() == original


def test_add_through_a_symlink_replaces_the_target(tmp_path: Path) -> None:
    real = tmp_path / "real.htpasswd"
    link = tmp_path / "users.htpasswd"
    assert add(real, "alice").returncode == 0
    link.symlink_to(real)
    assert add(link, "bob").returncode == 0
    assert link.is_symlink()
    assert load(real).names == ("alice", "bob")


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "error: no password on stdin"),
        ("\n", "error: the password is empty; nothing was changed"),
        ("x" * 73 + "\n", "error: the password is 73 bytes long (UTF-8), and bcrypt uses at most 72"),
        ("é" * 37 + "\n", "error: the password is 74 bytes long (UTF-8)"),
        (b"caf\xe9\n", "error: the password on stdin is not UTF-8 text"),
        ("a\x00b-long-enough\n", "error: a password cannot contain a NUL character"),
    ],
)
def test_add_refuses_bad_passwords(tmp_path: Path, stdin: str | bytes, message: str) -> None:
    path = tmp_path / "users.htpasswd"
    r = portway("user", "add", "--cost", "4", str(path), "alice", stdin=stdin)
    assert r.returncode == 1
    assert r.stderr.startswith(message), r.stderr
    assert not path.exists()


def test_add_reads_one_line_and_keeps_spaces(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    r = portway("user", "add", "--cost", "4", str(path), "alice", stdin=" spaced pass \r\nsecond line\n")
    assert r.returncode == 0, r.stderr
    creds = load(path)
    assert creds.verify("alice", " spaced pass ")
    assert not creds.verify("alice", "spaced pass")


def test_add_warns_about_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("# users\n")
    path.chmod(0o644)
    r = add(path, "alice")
    assert r.returncode == 0
    assert f"warning: {path} is readable by every user; it holds password hashes" in r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # warned about, not changed


def test_add_warns_about_a_short_password(tmp_path: Path) -> None:
    r = portway("user", "add", "--cost", "4", str(tmp_path / "u"), "alice", stdin="short\n")
    assert r.returncode == 0
    assert "warning: the password is only 5 characters long" in r.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "error: NAME: the name is empty"),
        ("al:ice", 'error: NAME: a name cannot contain ":"'),
        ("#alice", 'error: NAME: a name cannot start with "#"'),
        (" alice", "error: NAME: a name cannot start or end with whitespace"),
        ("a" * 256, "error: NAME: the name is longer than 255 bytes"),
    ],
)
def test_add_refuses_bad_names(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / "users.htpasswd"
    r = portway("user", "add", "--cost", "4", str(path), name, stdin=PASSWORD + "\n")
    assert r.returncode == 2
    assert r.stderr.startswith(message), r.stderr
    assert not path.exists()


@pytest.mark.parametrize("cost", ["3", "32"])
def test_add_refuses_a_cost_out_of_range(tmp_path: Path, cost: str) -> None:
    r = portway("user", "add", "--cost", cost, str(tmp_path / "u"), "alice", stdin=PASSWORD + "\n")
    assert r.returncode == 2
    assert r.stderr == f"error: --cost: expected 4 to 31, got {cost}\n"


def test_add_asks_twice_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    out, status = _on_terminal(["user", "add", "--cost", "4", str(path), "alice"], [PASSWORD, PASSWORD])
    assert status == 0, out
    assert "password: " in out
    assert "again: " in out
    assert PASSWORD not in out  # not echoed
    assert load(path).verify("alice", PASSWORD)


def test_add_on_a_terminal_refuses_two_different_passwords(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    out, status = _on_terminal(["user", "add", "--cost", "4", str(path), "alice"], [PASSWORD, OTHER])
    assert status == 1
    assert "error: the two passwords differ; nothing was changed" in out
    assert not path.exists()


def _on_terminal(args: list[str], answers: list[str]) -> tuple[str, int]:
    """Run ``portway ARGS`` with a pseudo-terminal as stdin, answering each prompt in turn."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "portway", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=ROOT,
        start_new_session=True,  # no controlling terminal: getpass falls back to stdin (the pty)
    )
    os.close(terminal)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            prompts = output.count(b"password: ") + output.count(b"again: ")
            while pending and prompts > len(answers) - len(pending):
                os.write(controller, pending.pop(0).encode() + b"\n")
        status = process.wait(timeout=60)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    return output.decode("utf-8", "replace"), status


# --- remove, list -------------------------------------------------------------------------------------


def test_list_prints_names_only(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    for name in ("alice", "bob", "zoë"):
        assert add(path, name).returncode == 0
    r = portway("user", "list", str(path))
    assert r.returncode == 0
    assert r.stdout == "alice\nbob\nzoë\n"


def test_list_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("# nobody\n")
    r = portway("user", "list", str(path))
    assert r.returncode == 0
    assert r.stdout == ""
    assert r.stderr == f"{path}: no users\n"


def test_remove_keeps_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("# users\n")
    path.chmod(0o600)
    for name in ("alice", "bob", "carol"):
        assert add(path, name).returncode == 0
    r = portway("user", "remove", str(path), "bob")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'removed user "bob" from {path} (2 users left)\n'
    assert path.read_text().startswith("# users\nalice:")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = load(path)
    assert creds.names == ("alice", "carol")
    assert not creds.verify("bob", PASSWORD)
    assert creds.verify("carol", PASSWORD)


def test_remove_the_last_user_warns(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    assert add(path, "alice").returncode == 0
    r = portway("user", "remove", str(path), "alice")
    assert r.returncode == 0
    assert "has no users now" in r.stderr
    assert load(path).names == ()


def test_remove_an_unknown_user(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    assert add(path, "alice").returncode == 0
    before = path.read_text()
    r = portway("user", "remove", str(path), "bob")
    assert r.returncode == 1
    assert r.stderr == f'error: {path}: there is no user "bob"; nothing was changed\n'
    assert path.read_text() == before


@pytest.mark.parametrize(("action", "status"), [("list", 1), ("remove", 1), ("check", 2)])
def test_missing_file_is_named(tmp_path: Path, action: str, status: int) -> None:
    path = tmp_path / "missing.htpasswd"
    name = [] if action == "list" else ["alice"]
    r = portway("user", action, str(path), *name, stdin=PASSWORD + "\n")
    assert r.returncode == status
    assert r.stderr == f"error: {path}: no such file\n"


# --- check --------------------------------------------------------------------------------------------


def test_check_exit_status(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    assert add(path, "alice").returncode == 0

    r = portway("user", "check", str(path), "alice", stdin=PASSWORD + "\n")
    assert r.returncode == 0
    assert r.stdout == f'match: that is the password of user "alice" in {path}\n'

    r = portway("user", "check", str(path), "alice", stdin=OTHER + "\n")
    assert r.returncode == 1
    assert r.stderr == f'no match: that is not the password of user "alice" in {path}\n'

    r = portway("user", "check", str(path), "bob", stdin=PASSWORD + "\n")
    assert r.returncode == 1
    assert r.stderr == f'error: {path}: there is no user "bob"\n'

    r = portway("user", "check", str(path), "alice", stdin="x" * 80 + "\n")
    assert r.returncode == 1
    assert "bcrypt checks at most 72" in r.stderr


def test_check_reports_a_broken_file_with_status_2(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("alice\n")
    r = portway("user", "check", str(path), "alice", stdin=PASSWORD + "\n")
    assert r.returncode == 2
    assert r.stderr == f'error: {path}: line 1: expected NAME:HASH (the htpasswd format), found no ":"\n'


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) is not installed")
def test_files_are_shared_with_htpasswd(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    assert add(path, "alice").returncode == 0
    subprocess.run(
        ["htpasswd", "-i", "-B", "-C", "4", str(path), "bob"],
        input=OTHER.encode(),
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert portway("user", "check", str(path), "bob", stdin=OTHER + "\n").returncode == 0
    # htpasswd -v checks a password against the file: it reads what portway wrote
    r = subprocess.run(
        ["htpasswd", "-i", "-v", str(path), "alice"], input=PASSWORD.encode(), capture_output=True, timeout=30
    )
    assert r.returncode == 0, r.stderr


# --- help ---------------------------------------------------------------------------------------------


def test_help_has_examples() -> None:
    r = portway("user", "--help")
    assert r.returncode == 0
    for action in ("add", "remove", "list", "check"):
        assert f"portway user {action} users.htpasswd" in r.stdout
    r = portway("user")
    assert r.returncode == 2
    assert "usage: portway user" in r.stdout
    r = portway("--help")
    assert "user" in r.stdout


def test_password_is_never_an_argument() -> None:
    r = portway("user", "add", "--password", "x", "f", "alice")
    assert r.returncode == 2
    assert "unrecognized arguments: --password" in r.stderr
