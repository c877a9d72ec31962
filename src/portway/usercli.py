"""``portway user``: add, remove, list and check the users of a forward proxy's users file.

The file is htpasswd-style (``name:$2y$...`` a line, what ``htpasswd -B`` writes), read by
:class:`portway.route.auth.Credentials`. Edits keep every other line and comment as it was and
replace the file atomically (a temporary file in the same directory, then a rename), so the
proxy reading it during a reload sees the old file or the new one, never half of one.

Passwords come from the terminal (asked twice when setting one) or, from a pipe, as one line of
stdin; never from the command line, where other users could see them in ``ps`` and the shell
keeps them in its history. Nothing prints a password or a hash.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import stat
import sys
import tempfile

import bcrypt

from portway.route.auth import MAX_PASSWORD_BYTES, Credentials, VerifyCache, name_problem

USER_DESCRIPTION = """\
Manage the users file of a forward proxy listener (HTTP Basic proxy
authentication and SOCKS5 username/password): one "name:bcrypt-hash" a line,
the format `htpasswd -B` writes, so either tool can edit it. Blank lines and
"#" comments are kept as they are.

Passwords are asked for on the terminal, or read as one line of stdin from a
pipe; never from the command line, where `ps` and the shell history would show
them. bcrypt uses at most 72 bytes of a password, so longer ones are refused.
"""

USER_EPILOG = """\
examples:
  portway user add users.htpasswd alice              # asks for the password twice
  printf '%s\\n' "$PW" | portway user add users.htpasswd bob --cost 10
  portway user list users.htpasswd
  portway user check users.htpasswd alice            # exit 0 if the password matches
  portway user remove users.htpasswd bob
  htpasswd -B -C 12 users.htpasswd carol             # Apache's tool writes the same format
"""

ADD_DESCRIPTION = """\
Set NAME's password in FILE: replace NAME's line if there is one, else add a
line at the end. FILE is created (mode 0600) if it does not exist. The password
is asked for twice on a terminal, or read as one line of stdin from a pipe.
"""

ADD_EPILOG = """\
examples:
  portway user add users.htpasswd alice
  printf '%s\\n' "$PW" | portway user add users.htpasswd bob      # printf is a shell builtin: not in ps
  portway user add --cost 10 users.htpasswd carol < carol.password

--cost sets how slow the hash is: each step doubles the time of a check (cost
12 takes about 250 ms). The proxy checks a password once for each new login and
remembers the logins that succeeded, so a repeated login costs almost nothing.
"""

CHECK_DESCRIPTION = """\
Check a password against NAME's hash in FILE, as the proxy would: for an
operator debugging a refused login. The password is asked for on a terminal, or
read as one line of stdin from a pipe.
"""

CHECK_EPILOG = """\
examples:
  portway user check users.htpasswd alice
  printf '%s\\n' "$PW" | portway user check users.htpasswd alice && echo ok

exit status: 0 when the password matches; 1 when it does not, or NAME is not in
FILE; 2 when FILE cannot be read or is not a valid users file.
"""

DEFAULT_COST = 12
"""The bcrypt cost ``portway user add`` uses unless told (``htpasswd -B`` uses 5: quick to attack)."""

_COST_RANGE = range(4, 32)
_PLACEHOLDER_HASH = "$2y$04$" + "." * 53  # well-formed, matches nothing; never written
_SHORT_PASSWORD = 8


class _UserError(Exception):
    """A problem to print as ``error: <message>`` and exit with ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _warn(message: str) -> None:
    """Print a warning on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def add_user_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``portway user add|remove|list|check``."""
    raw = argparse.RawDescriptionHelpFormatter
    user = sub.add_parser(
        "user",
        help="manage the users of a forward proxy (add, remove, list, check)",
        description=USER_DESCRIPTION,
        epilog=USER_EPILOG,
        formatter_class=raw,
    )
    user.set_defaults(user_help=user.print_help)
    actions = user.add_subparsers(dest="user_command", metavar="ACTION")

    add = actions.add_parser(
        "add",
        help="add a user, or set a user's password",
        description=ADD_DESCRIPTION,
        epilog=ADD_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    add.add_argument("file", metavar="FILE", help="the users file (created if missing)")
    add.add_argument("name", metavar="NAME", help="the user name")
    add.add_argument(
        "--cost",
        type=int,
        default=DEFAULT_COST,
        metavar="N",
        help=f"bcrypt cost, 4 to 31; each step doubles the work (default: {DEFAULT_COST})",
    )

    remove = actions.add_parser(
        "remove",
        help="remove a user",
        description="Remove NAME's line from FILE, keeping every other line.",
        epilog="example:\n  portway user remove users.htpasswd bob\n",
        formatter_class=raw,
        allow_abbrev=False,
    )
    remove.add_argument("file", metavar="FILE", help="the users file")
    remove.add_argument("name", metavar="NAME", help="the user name")

    listing = actions.add_parser(
        "list",
        help="print the user names",
        description="Print the user names in FILE, one a line, in file order (never their hashes).",
        epilog="example:\n  portway user list users.htpasswd\n",
        formatter_class=raw,
        allow_abbrev=False,
    )
    listing.add_argument("file", metavar="FILE", help="the users file")

    check = actions.add_parser(
        "check",
        help="check a user's password (exit 0 if it matches)",
        description=CHECK_DESCRIPTION,
        epilog=CHECK_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    check.add_argument("file", metavar="FILE", help="the users file")
    check.add_argument("name", metavar="NAME", help="the user name")


def user_command(args: argparse.Namespace) -> int:
    """Run ``portway user ACTION``; the exit status."""
    if args.user_command is None:
        args.user_help()
        return 2
    try:
        if args.user_command == "add":
            return _add(args.file, args.name, args.cost)
        if args.user_command == "remove":
            return _remove(args.file, args.name)
        if args.user_command == "list":
            return _list(args.file)
        return _check(args.file, args.name)
    except _UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:  # Ctrl-C at a password prompt
        print(file=sys.stderr)
        return 130


# --- the file ----------------------------------------------------------------------------------


def _read(path: str, *, missing_ok: bool = False, status: int = 1) -> tuple[str, os.stat_result | None]:
    """``(text, stat)`` of the users file; ``("", None)`` for a missing file when ``missing_ok``."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read(), os.fstat(f.fileno())
    except FileNotFoundError:
        if missing_ok:
            return "", None
        raise _UserError(f"{path}: no such file", status) from None
    except IsADirectoryError:
        raise _UserError(f"{path}: is a directory, not a users file", status) from None
    except UnicodeDecodeError:
        raise _UserError(f"{path}: not UTF-8 text, so not a users file", status) from None
    except OSError as exc:
        raise _UserError(f"{path}: cannot read it ({exc.strerror})", status) from None


def _load(path: str, *, status: int = 1) -> Credentials:
    """The users in ``path``; any problem is a :class:`_UserError` naming the file and line."""
    text, _ = _read(path, status=status)
    try:
        return Credentials.parse(text, source=path, cache=VerifyCache(0))
    except ValueError as exc:
        raise _UserError(str(exc), status) from None


def _line_name(line: str) -> str | None:
    """The user name a line is about, ``None`` for a blank or comment line."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.partition(":")[0]


def _edit(lines: list[str], name: str, new_line: str | None) -> tuple[list[str], bool]:
    """``lines`` with NAME's line replaced by ``new_line`` (removed when ``None``) and whether it had one.

    Later lines for the same name (a broken file) are dropped; a new line goes at the end.
    """
    out: list[str] = []
    found = False
    for line in lines:
        if _line_name(line) != name:
            out.append(line)
            continue
        if not found and new_line is not None:
            out.append(new_line + "\n")
        found = True
    if not found and new_line is not None:
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += "\n"
        out.append(new_line + "\n")
    return out, found


def _write(path: str, text: str, old: os.stat_result | None) -> None:
    """Replace ``path`` with ``text`` atomically, keeping the old file's mode and owner (new: 0600)."""
    target = os.path.realpath(path)  # replace the file a symlink points to, not the symlink
    directory, base = os.path.split(target)
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    except OSError as exc:
        raise _UserError(f"{path}: cannot write next to it ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o600 if old is None else stat.S_IMODE(old.st_mode))
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    _warn(f"{path}: could not keep its owner and group; the file is now yours")
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise _UserError(f"{path}: cannot write it ({exc.strerror})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _validate(path: str, lines: list[str]) -> None:
    """Refuse to write ``lines`` unless they make a valid users file (the message names the line)."""
    try:
        Credentials.parse("".join(lines), source=path, cache=VerifyCache(0))
    except ValueError as exc:
        raise _UserError(f"{exc}; {path} was not changed") from None


def _save(path: str, lines: list[str], old: os.stat_result | None) -> None:
    """Check that ``lines`` make a valid users file, then write them; a bad result changes nothing."""
    _validate(path, lines)
    _write(path, "".join(lines), old)


# --- passwords ---------------------------------------------------------------------------------


def _read_password(*, confirm: bool) -> str:
    """A password from the terminal (twice when ``confirm``) or one line of stdin."""
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("password: ")
            if confirm and getpass.getpass("again: ") != password:
                raise _UserError("the two passwords differ; nothing was changed")
        except EOFError:
            raise _UserError("no password given (end of input at the prompt)") from None
        return password
    raw = sys.stdin.buffer.readline()
    if not raw:
        raise _UserError(
            "no password on stdin: give it as one line (e.g. printf '%s\\n' \"$PW\" | portway user ...), "
            "or run in a terminal to be asked for it"
        )
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _UserError("the password on stdin is not UTF-8 text") from None


def _check_new_password(password: str) -> bytes:
    """``password`` as the UTF-8 bytes bcrypt hashes, or a :class:`_UserError` saying why not."""
    encoded = password.encode("utf-8")
    if not encoded:
        raise _UserError("the password is empty; nothing was changed")
    if "\x00" in password:
        raise _UserError("a password cannot contain a NUL character; nothing was changed")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise _UserError(
            f"the password is {len(encoded)} bytes long (UTF-8), and bcrypt uses at most "
            f"{MAX_PASSWORD_BYTES}: choose a shorter one; nothing was changed"
        )
    if len(password) < _SHORT_PASSWORD:
        _warn(f"the password is only {len(password)} characters long; consider a longer one")
    return encoded


# --- the actions -------------------------------------------------------------------------------


def _valid_name(name: str) -> None:
    """Refuse a NAME the users file cannot hold (usage error, status 2)."""
    problem = name_problem(name)
    if problem is not None:
        raise _UserError(f"NAME: {problem}", status=2)


def _add(path: str, name: str, cost: int) -> int:
    """``portway user add``: set NAME's password, creating FILE if needed."""
    _valid_name(name)
    if cost not in _COST_RANGE:
        raise _UserError(f"--cost: expected 4 to 31, got {cost}", status=2)
    text, old = _read(path, missing_ok=True)
    if old is not None and old.st_mode & 0o004:
        _warn(f"{path} is readable by every user; it holds password hashes (chmod 600, or 640 for a group)")
    lines = text.splitlines(keepends=True)
    _validate(path, _edit(lines, name, f"{name}:{_PLACEHOLDER_HASH}")[0])  # before asking for a password
    password = _check_new_password(_read_password(confirm=True))
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode("ascii")
    hashed = "$2y$" + hashed.removeprefix("$2b$")  # the same algorithm, in the form htpasswd -B writes
    lines, replaced = _edit(lines, name, f"{name}:{hashed}")
    _save(path, lines, old)
    if old is None:
        print(f'created {path} (mode 0600) with user "{name}" (bcrypt, cost {cost})')
    elif replaced:
        print(f'set a new password for user "{name}" in {path} (bcrypt, cost {cost})')
    else:
        print(f'added user "{name}" to {path} (bcrypt, cost {cost})')
    return 0


def _remove(path: str, name: str) -> int:
    """``portway user remove``: drop NAME's line."""
    _valid_name(name)
    text, old = _read(path)
    lines, found = _edit(text.splitlines(keepends=True), name, None)
    if not found:
        raise _UserError(f'{path}: there is no user "{name}"; nothing was changed')
    _save(path, lines, old)
    left = sum(_line_name(line) is not None for line in lines)
    print(f'removed user "{name}" from {path} ({left} user{"s" * (left != 1)} left)')
    if left == 0:
        _warn(f"{path} has no users now: a proxy listener that uses it refuses every login")
    return 0


def _list(path: str) -> int:
    """``portway user list``: the names, one a line."""
    credentials = _load(path)
    for name in credentials.names:
        print(name)
    if not credentials.names:
        print(f"{path}: no users", file=sys.stderr)
    return 0


def _check(path: str, name: str) -> int:
    """``portway user check``: 0 if the password matches, 1 if not, 2 for a bad file."""
    credentials = _load(path, status=2)
    if name not in credentials:
        raise _UserError(f'{path}: there is no user "{name}"')
    password = _read_password(confirm=False)
    length = len(password.encode("utf-8"))
    if length > MAX_PASSWORD_BYTES:
        raise _UserError(
            f"the password is {length} bytes long (UTF-8); bcrypt checks at most {MAX_PASSWORD_BYTES}, "
            "so the proxy refuses it (htpasswd -B keeps only the first 72 bytes: set a shorter one)"
        )
    if not credentials.verify(name, password):
        print(f'no match: that is not the password of user "{name}" in {path}', file=sys.stderr)
        return 1
    print(f'match: that is the password of user "{name}" in {path}')
    return 0
