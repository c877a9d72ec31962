"""The gateway's command-line side: ``portway token`` (make, read and generate keys for tokens)
and ``portway connect`` (a local forwarder through a gateway).

Secrets and keys are read from files or environment variables, never from the command line,
where other users could see them in ``ps`` and the shell keeps them in its history.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import os
import re
import signal
import sys
import time
from dataclasses import dataclass

from portway import logs
from portway.config.units import format_hostport, parse_duration, parse_hostport
from portway.proto import gateway

TOKEN_DESCRIPTION = """\
Make and read the tokens a client sends to a gateway listener. A token is an
encrypted destination (host:port): the gateway decrypts it and connects the
client there if its policy allows; the client never learns a key.

  v2  AES-256-GCM with a key from a keyring: authenticated, with a validity
      window and a key id so that keys can be rotated. Prefer v2.
  v1  openssl-compatible (AES-256-CBC from a passphrase, like
      `openssl enc -aes-256-cbc -a -A -md md5`), for frontd-era clients; no
      expiry and no authentication.

Secrets and keys are read from a file (--secret-file, --keyring-file; keep it
chmod 600) or an environment variable (--secret-env, --keyring-env), never from
the command line, where `ps` and the shell history would show them.
"""

TOKEN_EPILOG = """\
examples:
  portway token keygen --kid 1 >> gateway.keyring      # once; the gateway reads the same file
  portway token encrypt --v2 --keyring-file gateway.keyring db.internal:5432 > db.token
  portway token decrypt --keyring-file gateway.keyring - < db.token
  portway connect --gateway gw.example.com:7000 --token-file db.token --listen 127.0.0.1:15432
"""

ENCRYPT_EPILOG = """\
WHEN is a duration from now ("30d", "12h", "1d12h", "90m") or a date and time
("2027-01-31", "2027-01-31T09:00", "2027-01-31T09:00Z"; local time unless it
carries an offset). --expires counts from --not-before when both are given.

examples:
  portway token encrypt --v2 --keyring-file gateway.keyring db.internal:5432
  portway token encrypt --v2 --keyring-env GW_KEYRING --expires 12h 10.0.0.5:22
  portway token encrypt --v2 --keyring-file gateway.keyring --not-before 2027-01-01 --expires 7d web:80
  portway token encrypt --v1 --secret-file gateway.secrets 10.0.0.5:22
  # the same kind of v1 token with openssl itself (GW_SECRET holds the passphrase):
  printf %s 10.0.0.5:22 | openssl enc -e -aes-256-cbc -a -A -md md5 -pass env:GW_SECRET

output: the token, one line, on stdout. A v1 secret file may list several
passphrases (one a line, for rotation); the first one encrypts.
"""

DECRYPT_DESCRIPTION = """\
Decrypt TOKEN with the given keys and print its version and address, and for
v2 its key id and validity window. TOKEN "-" reads the token from stdin, which
keeps it out of the shell history. The version is told by the token itself:
"v2." tokens need --keyring-file/--keyring-env, others --secret-file/--secret-env.
"""

DECRYPT_EPILOG = """\
examples:
  portway token decrypt --keyring-file gateway.keyring - < db.token   # "-": read stdin
  portway token decrypt --secret-env GW_SECRET U2FsdGVkX1...

output (v2):
  version     2
  address     db.internal:5432
  key id      1
  not before  -
  expires     2027-01-31T09:00:00Z (in 29d 23h)

exit status: 0 for a token that decrypts and is valid now; 1 when it does not
decrypt, has expired or is not valid yet (the reason is printed).
"""

KEYGEN_EPILOG = """\
examples:
  portway token keygen --kid 1 >> gateway.keyring
  # rotation: put the new key FIRST (it becomes current), keep the old one below it
  # until every token made with it has expired, then delete the old line:
  { portway token keygen --kid 2; cat gateway.keyring; } > new.keyring && mv new.keyring gateway.keyring

The output is a comment and one line "<key id> <base64 key>": 32 random bytes.
"""

CONNECT_DESCRIPTION = """\
Listen on a local port and forward every connection to the backend that a
token names, through a Portway gateway, so that programs that know nothing of
tokens (ssh, psql, a browser) can use it. Runs in the foreground and prints
"forwarding LOCAL -> gateway HOST:PORT" once it is listening.
"""

CONNECT_EPILOG = """\
examples:
  portway connect --gateway gw.example.com:7000 --token-file db.token --listen 127.0.0.1:15432
  psql -h 127.0.0.1 -p 15432 app                  # in another terminal: through the gateway
  DB_TOKEN=$(cat db.token) portway connect --gateway gw.example.com:7000 --token-env DB_TOKEN \\
      --listen 127.0.0.1:0                        # port 0: any free port; the line says which

Each local connection opens its own gateway connection with the token. When the
gateway refuses, the local connection is closed and one line on stderr says why,
e.g. "401: the gateway refused the token (invalid, expired or for another gateway)".
Ctrl-C or SIGTERM closes everything and exits 0. Anyone who can reach the local
port reaches the backend, without a token: keep it on 127.0.0.1.
"""

_DEFAULT_LIFETIME = "30d"
_DAYS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)d")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BARE_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")
_V1_PREFIX = "U2FsdGVkX1"
_V2_PREFIX = "v2."


class _CliError(Exception):
    """A problem to print as ``error: <message>`` and exit with ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _fail(exc: _CliError) -> int:
    """Print ``exc`` the way every command reports errors; its exit status."""
    print(f"error: {exc}", file=sys.stderr)
    return exc.status


def _warn(message: str) -> None:
    """Print a warning on stderr (stdout holds only the command's result)."""
    print(f"warning: {message}", file=sys.stderr)


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    """The options that say where v1 secrets and the v2 keyring are read from (never their text)."""
    keys = parser.add_argument_group(
        "keys (read from a file or an environment variable, never given on the command line)"
    )
    secret = keys.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret-file",
        "--secrets-file",
        metavar="FILE",
        help="v1: file of passphrases, one a line (# comments allowed); the first encrypts, all decrypt",
    )
    secret.add_argument(
        "--secret-env",
        "--secrets-env",
        metavar="VAR",
        help="v1: environment variable holding the passphrase(s)",
    )
    keyring = keys.add_mutually_exclusive_group()
    keyring.add_argument(
        "--keyring-file",
        metavar="FILE",
        help='v2: keyring file, "<key id> <base64 key>" a line (token keygen)',
    )
    keyring.add_argument("--keyring-env", metavar="VAR", help="v2: environment variable holding the keyring")


def add_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``portway token encrypt|decrypt|keygen``."""
    raw = argparse.RawDescriptionHelpFormatter
    token = sub.add_parser(
        "token",
        help="make and read gateway tokens (encrypt, decrypt, keygen)",
        description=TOKEN_DESCRIPTION,
        epilog=TOKEN_EPILOG,
        formatter_class=raw,
    )
    token.set_defaults(token_help=token.print_help)
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")

    encrypt = actions.add_parser(
        "encrypt",
        help="print a token for ADDRESS",
        description="Print a token that sends a gateway client to ADDRESS (host:port or [ipv6]:port).",
        epilog=ENCRYPT_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    version = encrypt.add_mutually_exclusive_group(required=True)
    version.add_argument(
        "--v2",
        dest="version",
        action="store_const",
        const=2,
        help="authenticated, expiring (needs a keyring)",
    )
    version.add_argument(
        "--v1",
        dest="version",
        action="store_const",
        const=1,
        help="openssl/frontd-compatible (needs a secret)",
    )
    encrypt.add_argument("address", metavar="ADDRESS", help="the backend, e.g. db.internal:5432")
    _add_key_options(encrypt)
    encrypt.add_argument(
        "--digest",
        choices=("md5", "sha256"),
        help="v1: key derivation digest, as openssl's -md (default: md5, what frontd uses)",
    )
    encrypt.add_argument(
        "--expires", metavar="WHEN", help=f"v2: when the token stops working (default: {_DEFAULT_LIFETIME})"
    )
    encrypt.add_argument(
        "--not-before", metavar="WHEN", help="v2: when the token starts working (default: now)"
    )

    decrypt = actions.add_parser(
        "decrypt",
        help="check a token and print where it leads",
        description=DECRYPT_DESCRIPTION,
        epilog=DECRYPT_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    decrypt.add_argument("token", metavar="TOKEN", help='the token line, or "-" to read it from stdin')
    _add_key_options(decrypt)
    decrypt.add_argument(
        "--digest", choices=("md5", "sha256"), default="md5", help="v1: key derivation digest (default: md5)"
    )

    keygen = actions.add_parser(
        "keygen",
        help="print a new v2 keyring line",
        description="Print a new random v2 key as a keyring line, with a comment saying where it goes.",
        epilog=KEYGEN_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    keygen.add_argument(
        "--kid", type=int, metavar="N", help="the key id, 0 to 4294967295 (default: random); must be unique"
    )


def add_connect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``portway connect``: the local forwarder."""
    connect = sub.add_parser(
        "connect",
        help="forward a local port to a backend through a gateway",
        description=CONNECT_DESCRIPTION,
        epilog=CONNECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    connect.add_argument("--gateway", required=True, metavar="HOST:PORT", help="the gateway listener")
    token = connect.add_mutually_exclusive_group(required=True)
    token.add_argument(
        "--token-file", metavar="FILE", help="file holding the token (a trailing newline is fine)"
    )
    token.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    connect.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="local address to listen on, e.g. 127.0.0.1:15432",
    )
    connect.add_argument(
        "--connect-timeout",
        default="10s",
        metavar="DURATION",
        help="time allowed for each gateway handshake (default: 10s)",
    )


# --- reading keys and tokens -------------------------------------------------------------------


def _read_source(
    file: str | None, env: str | None, file_option: str, env_option: str, *, private: bool = True
) -> tuple[str, str] | None:
    """``(text, where)`` from ``file`` or the variable ``env``; ``None`` when neither is given.

    ``where`` names the source for messages (the file name, or ``$VAR``); the text itself is
    never printed. A ``private`` file (keys) readable by other users gets a warning.
    """
    if file is not None:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
                mode = os.fstat(f.fileno()).st_mode
        except FileNotFoundError:
            raise _CliError(f"{file_option} {file}: no such file") from None
        except UnicodeDecodeError:
            raise _CliError(f"{file_option} {file}: not UTF-8 text") from None
        except OSError as exc:
            raise _CliError(f"{file_option} {file}: cannot read it ({exc.strerror})") from None
        if private and mode & 0o044:
            _warn(f"{file} is readable by other users; keys belong in a file only you can read (chmod 600)")
        return text, file
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise _CliError(f"{env_option} {env}: the environment variable {env} is not set")
        return value, f"${env}"
    return None


@dataclass
class _Keys:
    """The keys given on the command line (either may be missing)."""

    secrets: list[bytes] | None
    secrets_source: str
    keyring: gateway.Keyring | None
    keyring_source: str


def _load_keys(args: argparse.Namespace) -> _Keys:
    """Read and parse the secrets and keyring named by the key options."""

    secrets: list[bytes] | None = None
    keyring: gateway.Keyring | None = None
    secret_source = _read_source(args.secret_file, args.secret_env, "--secret-file", "--secret-env")
    if secret_source is not None:
        try:
            secrets = gateway.load_secrets(secret_source[0], source=secret_source[1])
        except ValueError as exc:
            raise _CliError(str(exc)) from None
    keyring_source = _read_source(args.keyring_file, args.keyring_env, "--keyring-file", "--keyring-env")
    if keyring_source is not None:
        try:
            keyring = gateway.Keyring.parse(keyring_source[0], source=keyring_source[1])
        except ValueError as exc:
            raise _CliError(str(exc)) from None
    return _Keys(
        secrets,
        secret_source[1] if secret_source else "",
        keyring,
        keyring_source[1] if keyring_source else "",
    )


def _parse_when(text: str, option: str, *, base: float) -> float:
    """A WHEN argument as unix time: a date/time, or a duration after ``base``."""
    if _DATE.match(text):
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _CliError(
                f'{option}: expected a date and time like "2027-01-31T09:00Z", got "{text}"', status=2
            ) from None
        return when.timestamp()  # a naive time is local time
    days = 0.0
    rest = text
    match = _DAYS.match(text)
    if match is not None:
        days, rest = float(match[1]), text[match.end() :]
    expected = f'{option}: expected a duration like "30d", "12h" or "1d12h", or a date, got "{text}"'
    if _BARE_NUMBER.fullmatch(rest):
        raise _CliError(f"{expected} (the number needs a unit: d, h, m, s or ms)", status=2)
    try:
        seconds = parse_duration(rest) if rest else 0.0
    except ValueError:
        raise _CliError(f"{expected} (units: d, h, m, s, ms)", status=2) from None
    return base + days * 86400 + seconds


def _duration(text: str, option: str) -> float:
    """A duration option in seconds (``parse_duration``'s syntax); a usage error names ``option``."""
    if _BARE_NUMBER.fullmatch(text):
        raise _CliError(
            f'{option}: expected a duration like "10s", "500ms" or "1m30s", got "{text}" '
            "(the number needs a unit: h, m, s or ms)",
            status=2,
        )
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _CliError(f"{option}: {exc}", status=2) from None


def _format_time(when: float, now: float) -> str:
    """``2027-01-31T09:00:00Z (in 29d 23h)``: UTC, with the distance from ``now``."""
    stamp = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    delta = when - now
    span = abs(delta)
    days, rest = divmod(int(span), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        text = f"{days}d {hours}h"
    elif hours:
        text = f"{hours}h {minutes}m"
    elif minutes:
        text = f"{minutes}m {seconds}s"
    else:
        text = f"{seconds}s"
    return f"{stamp} (in {text})" if delta >= 0 else f"{stamp} ({text} ago)"


# --- portway token -----------------------------------------------------------------------------


def token_command(args: argparse.Namespace) -> int:
    """Run ``portway token ACTION``; the exit status."""
    if args.token_command is None:
        args.token_help()
        return 2
    try:
        if args.token_command == "encrypt":
            return _token_encrypt(args)
        if args.token_command == "decrypt":
            return _token_decrypt(args)
        return _token_keygen(args)
    except _CliError as exc:
        return _fail(exc)


def _token_encrypt(args: argparse.Namespace) -> int:
    """``portway token encrypt``: print one token line."""

    keys = _load_keys(args)
    if args.version == 1:
        for option, value in (("--expires", args.expires), ("--not-before", args.not_before)):
            if value is not None:
                raise _CliError(f"{option} is for v2 tokens; v1 tokens never expire", status=2)
        if keys.keyring is not None:
            raise _CliError(
                "--v1 encrypts with a secret (--secret-file/--secret-env), not a keyring", status=2
            )
        if keys.secrets is None:
            raise _CliError("--v1 needs the secret: give --secret-file FILE or --secret-env VAR", status=2)
        passphrase = keys.secrets[0]
        weakness = gateway.weak_secret(passphrase)
        if weakness is not None:
            _warn(f"{keys.secrets_source}: {weakness}")
        try:
            token = gateway.v1_encrypt(args.address, passphrase, digest=args.digest or "md5")
        except ValueError as exc:
            raise _CliError(_address_problem(args.address, exc), status=2) from None
    else:
        if args.digest is not None:
            raise _CliError("--digest is for v1 tokens; v2 tokens need none", status=2)
        if keys.secrets is not None:
            raise _CliError(
                "--v2 encrypts with a keyring (--keyring-file/--keyring-env), not a secret", status=2
            )
        if keys.keyring is None:
            raise _CliError(
                "--v2 needs a keyring: give --keyring-file FILE or --keyring-env VAR "
                "(make one with: portway token keygen --kid 1 > gateway.keyring)",
                status=2,
            )
        now = time.time()
        not_before = (
            None if args.not_before is None else _parse_when(args.not_before, "--not-before", base=now)
        )
        lifetime = args.expires or _DEFAULT_LIFETIME
        expires = _parse_when(lifetime, "--expires", base=now if not_before is None else not_before)
        if expires <= now:
            raise _CliError(f"--expires: {lifetime} is in the past; the token would never work", status=2)
        if not_before is not None and not_before >= expires:
            raise _CliError("--not-before must be earlier than --expires", status=2)
        try:
            token = gateway.v2_encrypt(
                args.address, keys.keyring, expires=expires, not_before=not_before, now=now
            )
        except ValueError as exc:
            raise _CliError(_address_problem(args.address, exc), status=2) from None
    print(token.decode("ascii"))
    return 0


def _valid_address(text: str) -> bool:
    """Whether ``text`` passes the gateway's address grammar."""

    try:
        gateway.parse_address(text)
    except gateway.TokenError:
        return False
    return True


def _address_problem(address: str, exc: Exception) -> str:
    """The message for an ADDRESS the token grammar refuses."""
    if _valid_address(address):
        return f"cannot make the token: {exc}"
    return (
        f'ADDRESS: expected host:port or [ipv6]:port, got "{address}" (a port from 1 to 65535, and an '
        "IPv4 address, a bracketed IPv6 address or a DNS name)"
    )


def _read_token_argument(text: str) -> bytes:
    """The TOKEN argument as bytes; ``-`` reads stdin. Surrounding whitespace is dropped."""
    if text == "-":
        text = sys.stdin.read()
    token = text.strip()
    if not token:
        raise _CliError("the token is empty" + (" (nothing came on stdin)" if text == "" else ""))
    if not token.isascii() or "\n" in token:
        raise _CliError("a token is one line of ASCII text; this is not a token")
    return token.encode("ascii")


def _token_decrypt(args: argparse.Namespace) -> int:
    """``portway token decrypt``: print what a token holds, or why it is refused."""

    token = _read_token_argument(args.token)
    keys = _load_keys(args)
    now = time.time()
    if token.startswith(_V2_PREFIX.encode()):
        if keys.keyring is None:
            raise _CliError(
                "this is a v2 token: give its keyring with --keyring-file FILE or --keyring-env VAR", status=2
            )
        header = gateway.v2_header(token)
        try:
            address = gateway.v2_decrypt(token, keys.keyring, now=now)
        except gateway.TokenError as exc:
            raise _CliError(_v2_refusal(str(exc), header, keys, now)) from None
        assert header is not None  # it verified, so it has one
        kid, not_before, expires = header
        print("version     2")
        print(f"address     {address}")
        print(f"key id      {kid}")
        print(f"not before  {_format_time(not_before, now) if not_before else '-'}")
        print(f"expires     {_format_time(expires, now)}")
        return 0
    if keys.secrets is None:
        what = "a v1 token" if token.startswith(_V1_PREFIX.encode()) else "not a v2 token, so read as v1"
        raise _CliError(
            f"this is {what}: give its secret with --secret-file FILE or --secret-env VAR", status=2
        )
    try:
        address = gateway.v1_decrypt(token, keys.secrets, digest=args.digest)
    except gateway.TokenError:
        n = len(keys.secrets)
        raise _CliError(
            f"invalid token: it does not decrypt to an address with the {n} secret{'s' * (n != 1)} from "
            f"{keys.secrets_source} and --digest {args.digest} (another secret or digest, or a damaged token)"
        ) from None
    print("version     1")
    print(f"address     {address}")
    return 0


def _v2_refusal(reason: str, header: tuple[int, int, int] | None, keys: _Keys, now: float) -> str:
    """Why a v2 token was refused, in words; the header is quoted only where it is trustworthy."""
    assert keys.keyring is not None
    if header is None or reason == "invalid token":
        return (
            f"invalid token: it does not verify with the keyring {keys.keyring_source} "
            "(a damaged or altered token, or another key with the same id)"
        )
    kid, not_before, expires = header
    if reason == "unknown key id":
        known = ", ".join(str(k) for k in sorted(keys.keyring.keys))
        return (
            f"invalid token: it names key id {kid}, which {keys.keyring_source} does not hold "
            f"(it holds {known})"
        )
    if reason == "expired":
        return f"the token expired: {_format_time(expires, now)} (key id {kid})"
    if reason == "not yet valid":
        return f"the token is not valid yet: it starts working {_format_time(not_before, now)} (key id {kid})"
    return f"invalid token: {reason}"


def _token_keygen(args: argparse.Namespace) -> int:
    """``portway token keygen``: print a commented keyring line."""

    if args.kid is not None and not 0 <= args.kid <= 0xFFFFFFFF:
        raise _CliError(f"--kid: expected a key id from 0 to 4294967295, got {args.kid}", status=2)
    line = gateway.Keyring.new_line(args.kid)
    print(
        "# A v2 gateway key: add this line to the keyring file that the gateway listener's\n"
        "# keyring_file names, and that `portway token encrypt --v2 --keyring-file` reads.\n"
        "# The first key in the file makes new tokens; keep older keys below it until their\n"
        "# tokens expire. Keep the file secret (chmod 600): the key can make any token."
    )
    print(line)
    return 0


# --- portway connect ---------------------------------------------------------------------------


def _read_token_source(args: argparse.Namespace) -> bytes:
    """The token for ``portway connect``, from --token-file or --token-env, without line ending."""
    source = _read_source(args.token_file, args.token_env, "--token-file", "--token-env", private=False)
    assert source is not None  # argparse requires one of them
    text, where = source
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise _CliError(f"{where}: no token found (it is empty)")
    if len(lines) > 1:
        raise _CliError(f"{where}: expected one token line, found {len(lines)} lines")
    token = lines[0]
    if not token.isascii():
        raise _CliError(f"{where}: a token is ASCII text; this holds other characters")
    if not token.startswith((_V1_PREFIX, _V2_PREFIX)):
        _warn(f'{where} does not look like a gateway token (they start with "v2." or "{_V1_PREFIX}")')
    return token.encode("ascii")


def connect_command(args: argparse.Namespace) -> int:
    """Run ``portway connect`` until SIGINT or SIGTERM; the exit status."""
    try:
        try:
            gateway = parse_hostport(args.gateway, allow_port_zero=False)
        except ValueError as exc:
            raise _CliError(f"--gateway: {exc}", status=2) from None
        if gateway[0] == "*":
            raise _CliError('--gateway: give the gateway\'s host name or address, not "*"', status=2)
        try:
            listen = parse_hostport(args.listen)
        except ValueError as exc:
            raise _CliError(f"--listen: {exc}", status=2) from None
        if listen[0] == "*":
            raise _CliError(
                '--listen: give an address, e.g. "127.0.0.1:15432" ("*" is not accepted)', status=2
            )
        timeout = _duration(args.connect_timeout, "--connect-timeout")
        if timeout <= 0:
            raise _CliError("--connect-timeout: must be more than 0", status=2)
        token = _read_token_source(args)
    except _CliError as exc:
        return _fail(exc)
    if not _is_loopback(listen[0]):
        _warn(
            f"listening on {listen[0]}: anyone who can reach this port reaches the backend, without a token"
        )

    logs.setup("info", "text", "connect")
    import uvloop

    try:
        return int(uvloop.run(_forward_until_signal(gateway, token, listen, timeout)))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        return 0


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _forward_until_signal(
    gateway: tuple[str, int], token: bytes, listen: tuple[str, int], timeout: float
) -> int:
    """Serve the forwarder until SIGINT/SIGTERM (exit 0) or until it cannot listen (exit 1)."""
    from portway.forward import serve_forwarder

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(bound: tuple[str, int]) -> None:
        print(f"forwarding {format_hostport(*bound)} -> gateway {format_hostport(*gateway)}", flush=True)

    serving = asyncio.create_task(
        serve_forwarder(gateway, token, listen, connect_timeout=timeout, on_ready=ready)
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        stopping.cancel()
        exc = serving.exception()
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            return _fail(_CliError(f"cannot listen on {format_hostport(*listen)}: {reason}"))
        serving.result()  # anything else is a bug: let it show
        return 1
    serving.cancel()
    try:
        await serving
    except asyncio.CancelledError:
        pass
    return 0
