"""SOCKS5, the server side: greeting, username/password, CONNECT request and replies, sans-IO.

Specs (quoted below by number): RFC 1928 (SOCKS Protocol Version 5) §3 method negotiation,
§4 requests, §5 addressing, §6 replies; RFC 1929 (Username/Password Authentication for SOCKS
V5) §2. Only CONNECT is served; BIND and UDP ASSOCIATE are answered "command not supported".

The conversation, and who does what (this module parses and builds; the caller reads, writes,
checks credentials, applies policy and dials)::

    client                          server
    VER NMETHODS METHODS        ->  parse_greeting(), choose_method()
                                <-  method_reply(method); after NO_ACCEPTABLE, close
    VER ULEN UNAME PLEN PASSWD  ->  parse_auth(), credentials.matches()   (USERNAME_PASSWORD only)
                                <-  auth_reply(ok); after False, close
    VER CMD RSV ATYP ADDR PORT  ->  parse_request(), policy, dial
                                <-  reply(Reply.SUCCEEDED, bound), then relay; or
                                    reply(code), then close (reply_for_oserror() for a failed dial)

Contract of the three parsers (as every parser in :mod:`portway.proto`). Each is given every
byte received so far *for its phase*: the caller strips what earlier phases used
(``greeting.length``, then ``credentials.length``) and passes the rest. Clients pipeline (a
greeting, credentials and request in one segment; a request followed by a TLS ClientHello), so
each parser reads only its own message and reports its size in ``length``; the bytes after it
were not looked at and belong to the next phase. A parser answers in one of three ways:

1. ``NEED_DATA``: the bytes are a proper prefix of a possible message; read more.
2. A :class:`Greeting`, :class:`Credentials` or :class:`Request`: complete and valid.
3. :class:`Socks5Error`: the message is malformed or refused. ``error.reply`` is the
   :class:`Reply` to send before closing during the request phase, and ``None`` during the
   greeting and authentication phases, whose only answers are ``method_reply(NO_ACCEPTABLE)``
   and ``auth_reply(False)``.

Rule 1: a decision other than ``NEED_DATA`` never changes as more bytes arrive.

Rule 2 (when errors are raised): the version byte is refused as soon as it arrives, since a
peer that does not speak the phase's protocol sends nothing worth waiting for, and so is an
unknown address type, since without it the request has no known length. Every other error
waits until the whole message has arrived. The answer then comes after the client has stopped
sending: a server that closes a socket that still has unread bytes makes the kernel send a
reset, which can destroy the reply before the client reads it.

Rule 3 (strict framing): exact lengths, NMETHODS of at least 1, RSV exactly 0, and a request
port other than 0. The decisions made where the RFCs leave room are these:

- Usernames and passwords may be empty (0 bytes). RFC 1929 draws both fields as 1-255 bytes,
  but curl sends ``-U user:`` as PLEN 0 and ``-U :token`` as ULEN 0. The framing stays
  unambiguous, and whether an empty name or password is acceptable is for the credential
  check to decide. An empty string never matches a configured non-empty one.
- Each credential field is decoded as UTF-8, or as Latin-1 if it is not valid UTF-8: the rule
  that :func:`portway.route.auth.decode_credential` applies to HTTP Basic credentials, so
  one user can log in over both protocols from the same client. RFC 1929 names no encoding;
  clients send what the user typed, in practice UTF-8. The decoding never fails, and the
  result is always valid Unicode (no lone surrogates), so ``.encode("utf-8")`` and logging
  cannot fail on it. The password is kept out of ``repr``.
- Domain names (ATYP 3) must be 1-255 bytes on the wire and a valid host name once decoded:
  ASCII labels of letters, digits, ``-`` and ``_`` (as resolvers accept; container names
  use ``_``), 1-63 characters, neither starting nor ending with ``-``, at most 253
  characters. IDNA names arrive as ``xn--`` labels, as curl sends them. One trailing dot is
  accepted and stripped, and the name is lower-cased. ``example.com.`` and ``Example.COM``
  name the same host as ``example.com``, and giving policy, routing and logs one spelling
  keeps a trailing dot from slipping past a rule written without one. curl sends the
  URL's host as typed, trailing dot and case included.
- A domain name that is an IP literal (``"192.0.2.1"``, ``"2001:db8::1"``) is returned with
  kind ``"ipv4"`` or ``"ipv6"`` and the address in canonical form, so policy checks see the
  IP. A name whose last label is all digits, or ``0x`` and hex digits, is refused:
  ``inet_aton(3)``, and so ``getaddrinfo(3)``, reads ``127.1``, ``2130706433`` and
  ``0x7f000001`` as 127.0.0.1. Dialing such a "name" would reach an IP that policy never saw.
- Reply codes for a bad request: ``GENERAL_FAILURE`` for a malformed message (wrong version,
  RSV not 0, an empty name, port 0). Port 0 cannot be dialled, so it is a malformed request,
  not a policy decision. ``NOT_ALLOWED`` stays reserved for the ruleset, so an operator who
  sees 0x02 knows that policy refused. A name that cannot name a host (bad characters, bad
  labels, a numeric look-alike) gets ``HOST_UNREACHABLE``, which is what a server that tried
  to resolve it would answer. Tor answers a failed resolve the same way. Clients show it as
  "Host unreachable", which points the user at the name. ``COMMAND_NOT_SUPPORTED`` and
  ``ADDRESS_TYPE_NOT_SUPPORTED`` mean what they say. On a complete request the checks run in
  this order: RSV, then CMD, then the address. A BIND or UDP ASSOCIATE gets "command not
  supported" whatever its address says, since UDP ASSOCIATE legitimately sends 0.0.0.0:0.

The builders (:func:`method_reply`, :func:`auth_reply`, :func:`reply`) raise
:class:`ValueError` for arguments that cannot be encoded. That is a programming error, not a
protocol error.
"""

import enum
import errno
import hmac
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from portway.errors import ProtocolError
from portway.proto import NEED_DATA, NeedData

__all__ = [
    "AUTH_VERSION",
    "MAX_AUTH_LENGTH",
    "MAX_GREETING_LENGTH",
    "MAX_REQUEST_LENGTH",
    "NEED_DATA",
    "VERSION",
    "AddressType",
    "Command",
    "Credentials",
    "Greeting",
    "Kind",
    "Method",
    "NeedData",
    "Reply",
    "Request",
    "Socks5Error",
    "auth_reply",
    "choose_method",
    "method_reply",
    "parse_auth",
    "parse_greeting",
    "parse_request",
    "reply",
    "reply_for_errno",
    "reply_for_oserror",
]

VERSION: Final = 0x05
"""RFC 1928: the VER field of the greeting, the request and every reply."""
AUTH_VERSION: Final = 0x01
"""RFC 1929 §2: "The VER field contains the current version of the subnegotiation, which is X'01'"."""

MAX_GREETING_LENGTH: Final = 2 + 255
"""The longest greeting: VER, NMETHODS = 255, 255 methods. No caller needs to buffer more."""
MAX_AUTH_LENGTH: Final = 3 + 255 + 255
"""The longest username/password message: VER, ULEN, 255 bytes, PLEN, 255 bytes."""
MAX_REQUEST_LENGTH: Final = 4 + 1 + 255 + 2
"""The longest request: VER CMD RSV ATYP, a 255-byte domain name with its length byte, PORT."""

Kind: TypeAlias = Literal["ipv4", "ipv6", "name"]
"""What :attr:`Request.host` holds: an IPv4 literal, an IPv6 literal, or a DNS name."""


class Method(enum.IntEnum):
    """RFC 1928 §3 authentication METHOD values that Portway offers or answers with."""

    NO_AUTH = 0x00
    """X'00' NO AUTHENTICATION REQUIRED."""
    USERNAME_PASSWORD = 0x02
    """X'02' USERNAME/PASSWORD (RFC 1929)."""
    NO_ACCEPTABLE = 0xFF
    """X'FF' NO ACCEPTABLE METHODS: "the client MUST close the connection" (and so does Portway)."""


class Command(enum.IntEnum):
    """RFC 1928 §4 CMD values; only :attr:`CONNECT` is served."""

    CONNECT = 0x01
    """Open a TCP connection to DST.ADDR:DST.PORT."""
    BIND = 0x02
    """Listen for one inbound connection (FTP-style); refused with COMMAND_NOT_SUPPORTED."""
    UDP_ASSOCIATE = 0x03
    """Relay UDP datagrams; refused with COMMAND_NOT_SUPPORTED."""


class AddressType(enum.IntEnum):
    """RFC 1928 §4/§5 ATYP values."""

    IPV4 = 0x01
    """Four address bytes."""
    DOMAINNAME = 0x03
    """One length byte, then that many bytes of name, "with no terminating NUL octet"."""
    IPV6 = 0x04
    """Sixteen address bytes."""


class Reply(enum.IntEnum):
    """RFC 1928 §6 REP values, with when Portway sends each."""

    SUCCEEDED = 0x00
    """Connected; relaying starts."""
    GENERAL_FAILURE = 0x01
    """A malformed request (see the module docstring), or a dial error without a better code."""
    NOT_ALLOWED = 0x02
    """RFC 1928: "connection not allowed by ruleset"; the destination policy refused. Never raised here."""
    NETWORK_UNREACHABLE = 0x03
    """The dial failed with ENETUNREACH or ENETDOWN."""
    HOST_UNREACHABLE = 0x04
    """The dial failed with EHOSTUNREACH or EHOSTDOWN, the name did not resolve, or it is not a
    valid host name."""
    CONNECTION_REFUSED = 0x05
    """The dial failed with ECONNREFUSED."""
    TTL_EXPIRED = 0x06
    """The dial timed out (ETIMEDOUT, or the proxy's own connect timeout)."""
    COMMAND_NOT_SUPPORTED = 0x07
    """CMD is BIND, UDP ASSOCIATE or unknown."""
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08
    """ATYP is not 1, 3 or 4."""


class Socks5Error(ProtocolError):
    """Bad input from a SOCKS5 client; answer as :attr:`reply` says, then close.

    ``str(error)`` says what was wrong and quotes the input, for the access log. ``hint`` is the
    reply code as an ``int`` (``None`` when :attr:`reply` is).
    """

    reply: Reply | None
    """The :class:`Reply` to send when a reply is still possible (the request phase). ``None``
    during the greeting and authentication phases, where the answer is
    ``method_reply(Method.NO_ACCEPTABLE)`` or ``auth_reply(False)``."""

    def __init__(self, message: str, *, reply: Reply | None) -> None:
        super().__init__(message, hint=None if reply is None else int(reply))
        self.reply = reply

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_error, (str(self), None if self.reply is None else int(self.reply))


def _rebuild_error(message: str, reply: int | None) -> Socks5Error:
    return Socks5Error(message, reply=None if reply is None else Reply(reply))


def _show(raw: bytes | str, limit: int = 60) -> str:
    """Quote untrusted input for an error message, shortened."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def _check_version(data: bytes | bytearray, what: str, reply: Reply | None) -> None:
    if data[0] == VERSION:
        return
    other = " (SOCKS4 is not served)" if data[0] == 0x04 else ""
    raise Socks5Error(f"SOCKS {what} has version {data[0]}{other}; expected 5", reply=reply)


# --- greeting (RFC 1928 §3) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """The client's version identifier/method selection message."""

    methods: frozenset[int]
    """The METHOD values the client offers; any byte may appear, duplicates collapse."""
    length: int
    """Bytes the greeting occupied: ``2 + NMETHODS``. What follows belongs to the next phase."""


def parse_greeting(data: bytes | bytearray) -> Greeting | NeedData:
    """Recognise the greeting ``VER NMETHODS METHODS...`` at the start of ``data``.

    RFC 1928 §3::

        +----+----------+----------+
        |VER | NMETHODS | METHODS  |
        +----+----------+----------+
        | 1  |    1     | 1 to 255 |
        +----+----------+----------+

    Args:
        data: every byte received so far on the connection, from its first byte.

    Returns:
        A :class:`Greeting`, or ``NEED_DATA``.

    Raises:
        Socks5Error: VER is not 5 (at once), or NMETHODS is 0; ``reply`` is ``None``, so answer
            ``method_reply(Method.NO_ACCEPTABLE)`` and close.
    """
    if not data:
        return NEED_DATA
    _check_version(data, "greeting", None)
    if len(data) < 2:
        return NEED_DATA
    count = data[1]
    length = 2 + count
    if len(data) < length:
        return NEED_DATA
    if count == 0:
        raise Socks5Error(
            "SOCKS5 greeting offers no methods (NMETHODS is 0); at least 1 is required", reply=None
        )
    return Greeting(methods=frozenset(data[2:length]), length=length)


def choose_method(greeting: Greeting, *, auth_required: bool) -> Method:
    """Pick the authentication method to answer ``greeting`` with.

    With ``auth_required``, only :attr:`Method.USERNAME_PASSWORD` will do. Without it, only
    :attr:`Method.NO_AUTH` will do: a client that offers username/password alone is refused
    rather than asked for credentials nobody would check. Anything else gives
    :attr:`Method.NO_ACCEPTABLE`; send it and close.
    """
    wanted = Method.USERNAME_PASSWORD if auth_required else Method.NO_AUTH
    return wanted if wanted in greeting.methods else Method.NO_ACCEPTABLE


def method_reply(method: Method) -> bytes:
    """Return the METHOD selection message ``VER METHOD``, e.g. ``b"\\x05\\x00"``.

    Raises:
        ValueError: ``method`` is not a :class:`Method`.
    """
    return bytes([VERSION, Method(method)])


# --- username/password (RFC 1929 §2) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password from RFC 1929, decoded as the module docstring says.

    The password is left out of ``repr()`` so that logging the object does not leak it.
    """

    username: str
    """UNAME as UTF-8, or Latin-1 if it is not UTF-8; may be empty."""
    password: str = field(repr=False)
    """PASSWD as UTF-8, or Latin-1 if it is not UTF-8; may be empty."""
    length: int
    """Bytes the message occupied: ``3 + ULEN + PLEN``. What follows is the request."""

    def matches(self, username: str, password: str) -> bool:
        """Compare with the expected credentials in constant time (for equal lengths).

        Both fields are compared as their UTF-8 bytes, both always, so the timing does not
        tell which one was wrong.
        """
        user_ok = hmac.compare_digest(_raw(self.username), _raw(username))
        password_ok = hmac.compare_digest(_raw(self.password), _raw(password))
        return user_ok & password_ok


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> str:
    """UTF-8, or Latin-1 if the bytes are not UTF-8 (as ``route.auth.decode_credential``)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_auth(data: bytes | bytearray) -> Credentials | NeedData:
    """Recognise the username/password request at the start of ``data``.

    RFC 1929 §2::

        +----+------+----------+------+----------+
        |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
        +----+------+----------+------+----------+
        | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
        +----+------+----------+------+----------+

    (0-byte fields are accepted; see the module docstring.)

    Args:
        data: every byte received after the greeting.

    Returns:
        :class:`Credentials`, or ``NEED_DATA``.

    Raises:
        Socks5Error: VER is not 1; ``reply`` is ``None``, so answer ``auth_reply(False)``
            and close.
    """
    if not data:
        return NEED_DATA
    if data[0] != AUTH_VERSION:
        raise Socks5Error(
            f"SOCKS5 username/password message has version {data[0]}; RFC 1929 defines only 1",
            reply=None,
        )
    if len(data) < 2:
        return NEED_DATA
    user_end = 2 + data[1]
    if len(data) < user_end + 1:
        return NEED_DATA
    length = user_end + 1 + data[user_end]
    if len(data) < length:
        return NEED_DATA
    username = _decode(bytes(data[2:user_end]))
    password = _decode(bytes(data[user_end + 1 : length]))
    return Credentials(username=username, password=password, length=length)


def auth_reply(ok: bool) -> bytes:
    """Return the RFC 1929 status message: ``b"\\x01\\x00"`` (success) or ``b"\\x01\\x01"``.

    RFC 1929 §2: "A STATUS field of X'00' indicates success. If the server returns a `failure'
    (STATUS value other than X'00') status, it MUST close the connection."
    """
    return bytes([AUTH_VERSION, 0x00 if ok else 0x01])


# --- request (RFC 1928 §4, §5) ---------------------------------------------------------------

_COMMAND_NAMES: Final[dict[int, str]] = {Command.BIND: " (BIND)", Command.UDP_ASSOCIATE: " (UDP ASSOCIATE)"}
_FIXED_LENGTH: Final = {AddressType.IPV4: 4 + 4 + 2, AddressType.IPV6: 4 + 16 + 2}

# Host name grammar. Everything is ASCII; [0-9] rather than \d, which would match other digits.
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
_IPV4: Final = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
# RFC 1123 §2.1: LDH labels of 1-63 characters that neither start nor end with "-"; "_" is
# accepted too, as resolvers do (container and service names such as "my_db" use it).
_LABEL: Final = r"[0-9a-z_](?:[0-9a-z_-]{0,61}[0-9a-z_])?"
_NAME: Final = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
# A last label that inet_aton(3) reads as a number: decimal, octal (leading 0) or hex.
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_IPV6_TEXT: Final = re.compile(r"[0-9a-f:.]{2,45}")
_MAX_NAME: Final = 253


@dataclass(frozen=True, slots=True)
class Request:
    """A valid CONNECT request."""

    command: int
    """The CMD value; always :attr:`Command.CONNECT`, since nothing else parses."""
    host: str
    """By :attr:`kind`: a dotted-quad IPv4 address, an IPv6 address in compressed form (no
    brackets, no zone), or a lower-case DNS name without a trailing dot."""
    port: int
    """DST.PORT, 1 to 65535."""
    kind: Kind
    """``"ipv4"``, ``"ipv6"`` or ``"name"``, by what :attr:`host` holds, not by the ATYP sent:
    an IP literal sent as a domain name has its IP kind. An IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``) stays ``"ipv6"``; policy must look through it."""
    length: int
    """Bytes the request occupied. What follows is application data for the destination."""

    def __str__(self) -> str:
        """The destination as ``"host:port"``, or ``"[v6]:port"``, for logs."""
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_request(data: bytes | bytearray) -> Request | NeedData:
    """Recognise a CONNECT request at the start of ``data``.

    RFC 1928 §4::

        +----+-----+-------+------+----------+----------+
        |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
        +----+-----+-------+------+----------+----------+
        | 1  |  1  | X'00' |  1   | Variable |    2     |
        +----+-----+-------+------+----------+----------+

    Args:
        data: every byte received after the greeting, and after the credentials if any.

    Returns:
        A :class:`Request`, or ``NEED_DATA``.

    Raises:
        Socks5Error: with the :class:`Reply` to send, then close. VER not 5 and an unknown
            ATYP are raised as soon as their byte arrives, the rest once the whole request
            has: RSV not 0, CMD not CONNECT, a bad domain name, then port 0 (module
            docstring, Rules 2 and 3).
    """
    if not data:
        return NEED_DATA
    _check_version(data, "request", Reply.GENERAL_FAILURE)
    if len(data) < 4:
        return NEED_DATA
    atyp = data[3]
    if atyp == AddressType.DOMAINNAME:
        if len(data) < 5:
            return NEED_DATA
        length = 4 + 1 + data[4] + 2
    elif atyp in _FIXED_LENGTH:
        length = _FIXED_LENGTH[AddressType(atyp)]
    else:
        raise Socks5Error(
            f"SOCKS5 request has address type {atyp}; expected 1 (IPv4), 3 (domain name) or 4 (IPv6)",
            reply=Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        )
    if len(data) < length:
        return NEED_DATA
    request = bytes(data[:length])
    if request[2] != 0x00:
        raise Socks5Error(
            f"SOCKS5 request has RSV 0x{request[2]:02x}; RFC 1928 requires X'00'", reply=Reply.GENERAL_FAILURE
        )
    command = request[1]
    if command != Command.CONNECT:
        name = _COMMAND_NAMES.get(command, "")
        raise Socks5Error(
            f"SOCKS5 request has command {command}{name}; only CONNECT (1) is served",
            reply=Reply.COMMAND_NOT_SUPPORTED,
        )
    address = request[4:-2]
    host: str
    kind: Kind
    if atyp == AddressType.IPV4:
        host, kind = socket.inet_ntop(socket.AF_INET, address), "ipv4"
    elif atyp == AddressType.IPV6:
        host, kind = ipaddress.IPv6Address(address).compressed, "ipv6"
    else:
        host, kind = _domain_name(address[1:])
    port = int.from_bytes(request[-2:], "big")
    if port == 0:
        raise Socks5Error(
            f"SOCKS5 request for {host!r} has port 0, which cannot be dialled", reply=Reply.GENERAL_FAILURE
        )
    return Request(command=Command.CONNECT, host=host, port=port, kind=kind, length=length)


def _domain_name(raw: bytes) -> tuple[str, Kind]:
    """Validate a DOMAINNAME address (module docstring, Rule 3) and classify it."""
    if not raw:
        raise Socks5Error("SOCKS5 request has an empty domain name", reply=Reply.GENERAL_FAILURE)
    bad = next((b for b in raw if not 0x21 <= b <= 0x7E), None)
    if bad is not None:
        raise _bad_name(
            raw, f"has the byte 0x{bad:02x}; only printable ASCII is allowed (IDNA names as xn--)"
        )
    text = raw.decode("ascii").lower()
    if ":" in text:
        if _IPV6_TEXT.fullmatch(text):
            try:
                return ipaddress.IPv6Address(text).compressed, "ipv6"
            except ValueError:
                pass
        raise _bad_name(raw, "contains ':' but is not an IPv6 address (written without brackets or zone)")
    name = text[:-1] if text.endswith(".") else text
    if _IPV4.fullmatch(name):
        return name, "ipv4"
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise _bad_name(
            raw,
            "is not a host name (labels of 1-63 letters, digits and '-', not starting or ending "
            "with '-', at most 253 characters, at most one trailing dot)",
        )
    if _NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):
        raise _bad_name(raw, "ends in a numeric label; resolvers would read it as an IPv4 address")
    return name, "name"


def _bad_name(raw: bytes, why: str) -> Socks5Error:
    return Socks5Error(f"SOCKS5 request domain name {_show(raw)} {why}", reply=Reply.HOST_UNREACHABLE)


def reply(code: Reply, bound: tuple[str, int] | None = None) -> bytes:
    """Return the reply ``VER REP RSV ATYP BND.ADDR BND.PORT``.

    RFC 1928 §6: after a CONNECT, "BND.ADDR contains the associated IP address" and BND.PORT
    the port the server bound to connect to the target, so pass the outbound socket's
    ``getsockname()[:2]`` (IPv6 names give four items). Without ``bound``, as for every
    failure, the address is IPv4 ``0.0.0.0`` port ``0``. A zone (``"fe80::1%eth0"``) is
    dropped, and an IPv4-mapped IPv6 address (from a dual-stack socket) is sent as IPv4.

    Raises:
        ValueError: ``code`` is not a :class:`Reply`, the host is not an IP literal, or the
            port is outside 0-65535.
    """
    rep = Reply(code)
    if bound is None:
        return bytes([VERSION, rep, 0x00, AddressType.IPV4, 0, 0, 0, 0, 0, 0])
    host, port = bound
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bound port {port} is outside 0-65535")
    ip = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes([VERSION, rep, 0x00, atyp]) + ip.packed + port.to_bytes(2, "big")


_ERRNO_REPLIES: Final = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Reply.NETWORK_UNREACHABLE,
}


def reply_for_errno(err: int) -> Reply:
    """Map the ``errno`` of a failed connect to the reply code that describes it.

    ============================  ==========================
    ECONNREFUSED                  CONNECTION_REFUSED
    ETIMEDOUT                     TTL_EXPIRED
    EHOSTUNREACH, EHOSTDOWN       HOST_UNREACHABLE
    ENETUNREACH, ENETDOWN         NETWORK_UNREACHABLE
    anything else                 GENERAL_FAILURE
    ============================  ==========================

    RFC 1928 has no "timed out" code. X'06' "TTL expired" is the conventional stand-in: Tor
    answers a stream timeout with it, and curl and other clients print it as "TTL expired".
    """
    return _ERRNO_REPLIES.get(err, Reply.GENERAL_FAILURE)


def reply_for_oserror(error: OSError) -> Reply:
    """Map the exception of a failed resolve-and-connect to the reply code that describes it.

    :class:`socket.gaierror` (the name did not resolve) gives ``HOST_UNREACHABLE``, as Tor
    answers a failed resolve. A :class:`TimeoutError` without an errno (``asyncio.timeout``,
    ``asyncio.wait_for``) gives ``TTL_EXPIRED``. Anything else goes by its errno through
    :func:`reply_for_errno`. The ``errno`` of a ``gaierror`` is an ``EAI_*`` value, which must
    not be read as an errno.
    """
    if isinstance(error, socket.gaierror):
        return Reply.HOST_UNREACHABLE
    if error.errno is None:
        return Reply.TTL_EXPIRED if isinstance(error, TimeoutError) else Reply.GENERAL_FAILURE
    return reply_for_errno(error.errno)
