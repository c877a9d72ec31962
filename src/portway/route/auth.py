"""Users and passwords for the forward proxy: HTTP ``Proxy-Authorization: Basic`` and SOCKS5 (RFC 1929).

Strategy:

1. Users live in an htpasswd-style file, one ``name:hash`` a line, as ``htpasswd -B`` and
   ``portway user add`` write it. Only bcrypt hashes (``$2y$``, ``$2b$``, ``$2a$``) are accepted:
   the other htpasswd schemes (``$apr1$``, ``{SHA}``, DES crypt, plaintext) are fast to crack
   once the file leaks, so a file that uses one is refused with the line number and the scheme
   it uses, never the hash.
2. :meth:`Credentials.verify` runs exactly one bcrypt check per call that misses the cache, for
   a known user and an unknown one alike (the unknown user is checked against a dummy hash at
   the cost most of the file's hashes use), so the time taken does not tell whether a name
   exists. Keep one cost for every user, or a user with an unusual cost stands out.
3. bcrypt is slow on purpose (about 60 ms at cost 10, 250 ms at cost 12), and a proxy checks
   once per connection or request. A successful check is remembered in a bounded
   :class:`VerifyCache` keyed by the name, an HMAC of the password (under a random key of the
   cache's own, so the cache never holds a fast unsalted hash of a password) and the stored
   hash: a repeated correct login costs a dict lookup, and a changed hash (a new password, a
   reload) finds nothing. Failures are never cached.
4. bcrypt reads at most 72 bytes of a password, and bcrypt 5 refuses longer ones rather than
   ignore the rest. A password longer than 72 bytes (UTF-8) is a failed login here, checked
   without bcrypt; ``portway user add`` refuses to store one. Note that ``htpasswd -B``
   silently keeps only the first 72 bytes, so such a user must choose a shorter password.
5. A bcrypt check holds its thread for the whole check (bcrypt releases the GIL meanwhile).
   Code on an event loop calls :meth:`Credentials.verify_cached` first, which never runs
   bcrypt, and on ``False`` runs :meth:`Credentials.verify` in a thread
   (``loop.run_in_executor``). Both are thread-safe.

Passwords are compared as UTF-8 text: :func:`parse_basic` and :func:`decode_credential` turn
the bytes a client sends into ``str`` (UTF-8, else latin-1) before :meth:`Credentials.verify`
encodes them as UTF-8 again. No Unicode normalisation is applied.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

import bcrypt

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PASSWORD_BYTES",
    "PROXY_AUTHENTICATE",
    "Credentials",
    "VerifyCache",
    "decode_credential",
    "hash_problem",
    "name_problem",
    "parse_basic",
]

PROXY_AUTHENTICATE: Final = 'Basic realm="portway", charset="UTF-8"'
"""The ``Proxy-Authenticate`` value of a 407 answer (RFC 7617, with the UTF-8 charset hint)."""

MAX_PASSWORD_BYTES: Final = 72
"""The longest password bcrypt can check, in UTF-8 bytes; longer ones always fail."""

MAX_NAME_BYTES: Final = 255
"""The longest user name, in UTF-8 bytes: a SOCKS5 username (RFC 1929) is at most 255 bytes."""

DEFAULT_CACHE_SIZE: Final = 10_000
"""How many successful logins a :class:`VerifyCache` remembers by default."""

_BCRYPT: Final = re.compile(r"\$2[aby]\$(?P<cost>[0-9]{2})\$[./A-Za-z0-9]{53}", re.ASCII)
_BASIC: Final = re.compile(r"[ \t]*basic[ \t]+(\S+?)[ \t]*", re.ASCII | re.IGNORECASE)
"""``Basic <credentials>`` with optional spaces and tabs (RFC 9110 OWS) around and between."""
_BASE64: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
"""Strict base64 (RFC 4648 section 4): the alphabet, and padding exactly where it belongs."""
_DES_CRYPT: Final = re.compile(r"[./A-Za-z0-9]{13}", re.ASCII)
_SCHEMES: Final = (
    # (prefix, how the message names it); only these fixed strings are ever quoted.
    ("$2x$", "bcrypt $2x$ (crypt_blowfish's compatibility variant for an old bug)"),
    ("$2", "a malformed bcrypt hash"),
    ("$apr1$", "Apache MD5 ($apr1$, htpasswd -m)"),
    ("{SHA}", "SHA-1 ({SHA}, htpasswd -s)"),
    ("{SSHA}", "salted SHA-1 ({SSHA})"),
    ("$1$", "MD5-crypt ($1$)"),
    ("$5$", "SHA-256-crypt ($5$)"),
    ("$6$", "SHA-512-crypt ($6$)"),
    ("$y$", "yescrypt ($y$)"),
    ("$7$", "scrypt ($7$)"),
    ("$argon2", "Argon2 ($argon2...$)"),
)


def hash_problem(password_hash: str) -> str | None:
    """``None`` for a well-formed bcrypt hash, else the scheme it uses, in words.

    The words come from a fixed table (``"Apache MD5 ($apr1$, htpasswd -m)"``, ``"DES crypt
    (htpasswd -d)"``, ``"plaintext or an unknown scheme"``...), so they never quote the hash,
    which may be a plaintext password.
    """
    match = _BCRYPT.fullmatch(password_hash)
    if match is not None:
        if 4 <= int(match["cost"]) <= 31:
            return None
        return "a bcrypt hash with a cost outside 4 to 31"
    for prefix, scheme in _SCHEMES:
        if password_hash.startswith(prefix):
            return scheme
    if _DES_CRYPT.fullmatch(password_hash):
        return "DES crypt (htpasswd -d)"
    return "plaintext or an unknown scheme"


def name_problem(name: str) -> str | None:
    """``None`` if ``name`` can be a user name, else why not, as a phrase that does not quote it.

    A name is 1 to 255 UTF-8 bytes (the SOCKS5 limit), without ``:`` (the file's separator) or
    control characters, and neither starts with ``#`` (a comment) nor with or ends in
    whitespace (the file's lines are stripped).
    """
    if not name:
        return "the name is empty"
    if ":" in name:
        return 'a name cannot contain ":"'
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "a name cannot contain control characters"
    if name != name.strip():
        return "a name cannot start or end with whitespace"
    if name.startswith("#"):
        return 'a name cannot start with "#" (the line would be a comment)'
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes (the SOCKS5 limit)"
    return None


def _dummy_hash(cost: int) -> bytes:
    """A well-formed bcrypt hash of the given cost that no password matches.

    The salt and the digest are all zero bits, so checking any password against it costs
    exactly as much as a real check at that cost and fails (a real digest of all zeros is a
    2^-184 chance).
    """
    return f"$2b${cost:02d}$".encode("ascii") + b"." * 53


class VerifyCache:
    """The successful logins remembered so that a repeated one skips bcrypt; bounded and thread-safe.

    An entry is the user name, ``HMAC-SHA256(password)`` under a random key made for this
    cache, and the bcrypt hash the password was checked against. A new hash for the user (a
    changed password, seen after a reload) therefore misses. The least recently used entry is
    dropped when :attr:`maxsize` is reached. One cache may be shared by several
    :class:`Credentials` (the default shares one per process), so a reload keeps the logins of
    users whose hash did not change.
    """

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        """An empty cache holding at most ``maxsize`` entries (0 turns caching off)."""
        if maxsize < 0:
            raise ValueError(f"maxsize must be 0 or more, got {maxsize}")
        self.maxsize = maxsize
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many logins are remembered."""
        return len(self._entries)

    def __repr__(self) -> str:
        """Sizes only, never the entries."""
        return f"VerifyCache({len(self._entries)}/{self.maxsize})"

    def _entry(self, name: str, password: bytes, password_hash: bytes) -> tuple[str, bytes, bytes]:
        """The key of one login: name, keyed password digest, stored hash."""
        return name, hmac.digest(self._key, password, hashlib.sha256), password_hash

    def contains(self, name: str, password: bytes, password_hash: bytes) -> bool:
        """Whether this password was verified against this hash of ``name``; refreshes the entry."""
        entry = self._entry(name, password, password_hash)
        with self._lock:
            if entry not in self._entries:
                return False
            self._entries.move_to_end(entry)
            return True

    def add(self, name: str, password: bytes, password_hash: bytes) -> None:
        """Remember a successful check, dropping the least recently used entry when full."""
        if self.maxsize == 0:
            return
        entry = self._entry(name, password, password_hash)
        with self._lock:
            self._entries[entry] = None
            self._entries.move_to_end(entry)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every login."""
        with self._lock:
            self._entries.clear()


_SHARED_CACHE: Final = VerifyCache()


class Credentials:
    """The users of a proxy listener and their bcrypt hashes, with :meth:`verify` to check a login.

    Build one with :meth:`load` (a file) or :meth:`parse` (its text). It does not change after
    that; a reload builds a new one, and the shared :class:`VerifyCache` carries the logins
    that are still valid over.
    """

    source: str
    """Where the users came from, for messages (the file name)."""
    bcrypt_checks: int
    """How many bcrypt checks :meth:`verify` has run; a cache hit or an over-long password runs none."""

    def __init__(
        self, users: Iterable[tuple[str, str]], *, source: str = "users", cache: VerifyCache | None = None
    ) -> None:
        """Hold ``users``, ``(name, bcrypt hash)`` pairs; ``cache`` defaults to the process-wide one.

        Raises:
            ValueError: a name that :func:`name_problem` refuses, a name given twice, or a hash
                that is not bcrypt; the message names ``source`` and never quotes a hash.
        """
        hashes: dict[str, bytes] = {}
        for name, password_hash in users:
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(f"{source}: {problem}")
            if name in hashes:
                raise ValueError(f'{source}: user "{name}" is listed twice')
            scheme = hash_problem(password_hash)
            if scheme is not None:
                raise ValueError(
                    f'{source}: only bcrypt hashes are accepted (htpasswd -B); user "{name}" has {scheme}'
                )
            hashes[name] = password_hash.encode("ascii")
        self.source = source
        self.bcrypt_checks = 0
        self._hashes = hashes
        self._cache = _SHARED_CACHE if cache is None else cache
        costs = [int(h[4:6]) for h in hashes.values()]
        common = max(set(costs), key=costs.count) if costs else 12
        self._dummy = _dummy_hash(common)
        self._count_lock = threading.Lock()

    @classmethod
    def parse(cls, text: str, *, source: str, cache: VerifyCache | None = None) -> Credentials:
        """Read htpasswd-style text: ``name:$2y$...`` a line; blank lines and ``#`` comments are skipped.

        Each line is stripped of surrounding whitespace first. A file without users is valid
        (every login then fails); the caller may warn about it.

        Raises:
            ValueError: a line without ``:``, an empty or invalid name, a name listed twice, or
                a hash that is not bcrypt; the message names ``source`` and the line number and
                never quotes a hash or a password.
        """
        users: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}: line {number}"
            name, colon, password_hash = line.partition(":")
            if not colon:
                raise ValueError(f'{where}: expected NAME:HASH (the htpasswd format), found no ":"')
            if not name:
                raise ValueError(f"{where}: the user name before the colon is empty")
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(f"{where}: {problem}")
            if name in seen:
                raise ValueError(f'{where}: user "{name}" is already listed on line {seen[name]}')
            scheme = hash_problem(password_hash)
            if scheme is not None:
                raise ValueError(
                    f"only bcrypt hashes are accepted (htpasswd -B); line {number} of {source} uses {scheme} "
                    f'for user "{name}" (set a new password with: portway user add {source} {name})'
                )
            seen[name] = number
            users.append((name, password_hash))
        return cls(users, source=source, cache=cache)

    @classmethod
    def load(cls, path: str, *, cache: VerifyCache | None = None) -> Credentials:
        """Read the users file at ``path`` (UTF-8); every problem is a ``ValueError`` naming it."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
        return cls.parse(text, source=path, cache=cache)

    def __repr__(self) -> str:
        """The source and the number of users, never a hash."""
        return f"Credentials({self.source!r}, {len(self._hashes)} users)"

    def __len__(self) -> int:
        """How many users there are."""
        return len(self._hashes)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a user (for tools; :meth:`verify` needs no such check first)."""
        return name in self._hashes

    @property
    def names(self) -> tuple[str, ...]:
        """The user names, in file order."""
        return tuple(self._hashes)

    def verify_cached(self, username: str, password: str) -> bool:
        """``True`` if this exact login succeeded before and its hash is unchanged; never runs bcrypt.

        ``False`` means "not known": call :meth:`verify` (in a thread, from an event loop).
        """
        stored = self._hashes.get(username)
        if stored is None:
            return False
        encoded = _password_bytes(password)
        return encoded is not None and self._cache.contains(username, encoded, stored)

    def verify(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s password.

        A cache hit costs a dict lookup. Otherwise exactly one bcrypt check runs, against a
        dummy hash when the user does not exist, so that the time does not reveal which names
        exist. A password longer than :data:`MAX_PASSWORD_BYTES` fails without a check, as
        does one that cannot be UTF-8 (a lone surrogate); neither depends on the user.
        Blocks for the length of a bcrypt check; thread-safe.
        """
        encoded = _password_bytes(password)
        if encoded is None:
            return False
        stored = self._hashes.get(username)
        if stored is not None and self._cache.contains(username, encoded, stored):
            return True
        with self._count_lock:
            self.bcrypt_checks += 1
        if stored is None:
            bcrypt.checkpw(encoded, self._dummy)
            return False
        if not bcrypt.checkpw(encoded, stored):
            return False
        self._cache.add(username, encoded, stored)
        return True


def _password_bytes(password: str) -> bytes | None:
    """``password`` as the UTF-8 bytes bcrypt checks; ``None`` if too long or not encodable."""
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no client can have sent it as UTF-8
        return None
    return encoded if len(encoded) <= MAX_PASSWORD_BYTES else None


def decode_credential(raw: bytes) -> str:
    """A user name or password sent by a client, as text: UTF-8, or latin-1 if it is not UTF-8.

    RFC 7617 leaves the encoding open unless ``charset="UTF-8"`` was offered; old clients send
    latin-1. SOCKS5 (RFC 1929) sends bytes with no encoding at all; the same rule applies.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_basic(header_value: str) -> tuple[str, str] | None:
    """``(user, password)`` from a ``Proxy-Authorization`` value ``Basic base64(user:pass)``.

    The scheme is case-insensitive and may be surrounded and followed by spaces or tabs; the
    credentials must be strict base64 with padding. The decoded text is split at the first
    ``:`` (a password may hold colons, a user name cannot). The user name or the password may
    be empty. ``None`` for another scheme or anything malformed; never raises.
    """
    match = _BASIC.fullmatch(header_value)
    if match is None or _BASE64.fullmatch(match[1]) is None:
        return None
    raw = base64.b64decode(match[1])
    user, colon, password = decode_credential(raw).partition(":")
    if not colon:
        return None
    return user, password
