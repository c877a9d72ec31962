"""HTTP/1.x request head at the start of a connection: recognise it, sans-IO, without consuming.

Specs: RFC 9112 §2-3 and §5 (message format, request line, field lines), RFC 9110 §5.5, §5.6.2
and §7.2 (field values, tokens, Host), RFC 3986 §3.2 (authority). Quoted below by section.

Contract of :func:`parse`. It is given every byte received so far from the start of a
connection. It only looks; the caller replays every byte (head and whatever follows) to the
backend. It answers in one of three ways:

1. ``NEED_DATA``: the bytes so far are a proper prefix of a possible head; read more.
2. A :class:`RequestHead`: complete and valid. ``head.length`` bytes end with the blank line;
   anything after them (a body, a pipelined request, the HTTP/2 preface's ``SM``) was not looked at.
3. :class:`HeadError`: not an acceptable head. ``error.hint`` is the HTTP status to answer
   (400, 414, 431 or 505) before closing.

Rule 1: a result other than ``NEED_DATA`` never changes when more bytes arrive, and every prefix
of a valid head is ``NEED_DATA``. Errors come as early as the bytes allow: each line is checked
as soon as its CRLF arrives, and the line still arriving is checked as far as it goes (a TLS
ClientHello on a plaintext port is refused at its first byte, not after ``max_line`` bytes).

Rule 2: strict framing. Lines end with CRLF only; a bare LF or a bare CR is refused with 400.
RFC 9112 §2.2 lets a recipient accept a bare LF, but a router that accepts framing its backend
may read differently invites request smuggling, so Portway does not. Empty lines (CRLF) before
the request line are skipped, as §2.2 says a server SHOULD; they count in ``length``.

Rule 3: limits. A request line longer than ``max_line`` bytes (CRLF excluded) is 414, decided
as soon as that many bytes arrive without a CRLF. A field line longer than ``max_line`` is 431,
and so is a head that has no blank line within its first ``max_head`` bytes.

Rule 4: Host. HTTP/1.1 without a Host field is 400 (RFC 9112 §3.2: a server "MUST respond with a
400 (Bad Request) status code to any HTTP/1.1 request message that lacks a Host header field and
to any request message that contains more than one Host header field line or a Host header
field with an invalid field value"). HTTP/1.0 without Host parses with ``host=None``; the caller
decides whether that can be routed. An empty Host value is valid (§3.2 asks clients to send one
when the target has no authority) and also gives ``host=None``. When the request-target carries
an authority (absolute-form, or CONNECT's authority-form), it wins over Host (RFC 9112 §3.3:
the target URI is the request-target itself), but Host must still be valid.

Rule 5: versions. Only HTTP/1.0 and HTTP/1.1 are served; any other well-formed version is 505,
including ``PRI * HTTP/2.0``, the HTTP/2 prior-knowledge preface (RFC 9113 §3.4). A malformed
version is 400. (RFC 9112 §2.3 says HTTP/1.2+ SHOULD be treated as 1.1; no such client exists,
so Portway answers 505.) Every method that is a token is accepted; none is answered with 501.

Implementation choice: pure Python, no httptools. The head is parsed once per connection, and
on the 407-byte, 10-field browser head in ``bench/micro_httphead.py`` this parser takes about
8.7 µs against 4.1-4.5 µs for httptools 0.9.0 (llhttp, a fresh parser and Python callbacks per
head): under 2x, for a few microseconds per connection. The fast path checks the request line
and the whole field block with one regex each (both in C); only a head that fails them is
walked line by line, to say precisely what is wrong.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from portway.errors import ProtocolError
from portway.proto import NEED_DATA, NeedData

__all__ = [
    "DEFAULT_MAX_HEAD",
    "DEFAULT_MAX_LINE",
    "NEED_DATA",
    "HeadError",
    "NeedData",
    "RequestHead",
    "parse",
]

DEFAULT_MAX_HEAD: Final = 16384
"""Default limit on the whole head, blank line included (431 beyond)."""
DEFAULT_MAX_LINE: Final = 8192
"""Default limit on one line, CRLF excluded (414 for the request line, 431 for a field line)."""

# --- RFC grammar ---------------------------------------------------------------------------

# RFC 9110 §5.6.2: token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#         / DIGIT / ALPHA
_TCHAR: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_TOKEN: Final = re.compile(_TCHAR + rb"+")
_TOKEN_PREFIX: Final = re.compile(_TCHAR + rb"*")
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
# RFC 3986 §2: a URI is printable US-ASCII; RFC 9112 §3.2 "a server MUST respond with 400 ...
# to an invalid request-line". Anything outside VCHAR (%x21-7E) in the target is refused.
_TARGET_BAD: Final = re.compile(rb"[^\x21-\x7e]")
# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT ; HTTP-name = %s"HTTP"
_VERSION: Final = re.compile(rb"HTTP/([0-9])\.([0-9])")
_VERSION_PREFIX: Final = re.compile(rb"(?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?")
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS
# RFC 9110 §5.5: field-value = *field-content ; field-vchar = VCHAR / obs-text ; plus SP / HTAB
_FIELD_LINE: Final = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*(.*?)[ \t]*", re.DOTALL)
_VALUE_BAD: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB
# The same grammar for a whole block of CRLF-terminated field lines at once (the fast path,
# all in C): the block is valid iff it fully matches, then one findall splits it.
_FIELD_BLOCK: Final = re.compile(rb"(?:" + _TCHAR + rb"+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_REQUEST_LINE: Final = re.compile(_TCHAR + rb"+ [\x21-\x7e]+ HTTP/1\.[01]")
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ); absolute-form with an
# authority: scheme "://" authority path-abempty [ "?" query ]  (RFC 9112 §3.2.2, RFC 3986 §3)
_ABSOLUTE: Final = re.compile(r"([A-Za-z][-A-Za-z0-9+.]*)://([^/?#]*)")
# RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims )
_REG_NAME: Final = re.compile(r"(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_IPV6_TEXT: Final = re.compile(r"[0-9A-Fa-f:.]+")  # IPv6address chars; no zone id, no IPvFuture
_PORT: Final = re.compile(r"[0-9]{1,5}")  # port = *DIGIT, but Portway wants 0-65535

_BAD_REQUEST: Final = 400
_URI_TOO_LONG: Final = 414
_FIELDS_TOO_LARGE: Final = 431
_VERSION_NOT_SUPPORTED: Final = 505
_SUPPORTED: Final = ((1, 0), (1, 1))


class HeadError(ProtocolError):
    """The bytes are not an acceptable HTTP/1.x request head.

    ``hint`` is the HTTP status to answer: 400 (malformed, bad or missing Host), 414 (request
    line too long), 431 (field line or whole head too large) or 505 (not HTTP/1.0 or 1.1).
    ``str(error)`` says what is wrong and quotes the offending input.
    """

    hint: int

    def __init__(self, message: str, *, hint: int = _BAD_REQUEST) -> None:
        super().__init__(message, hint=hint)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and its header fields."""

    method: str
    """The method exactly as sent (case-sensitive, RFC 9110 §9.1), e.g. ``"GET"``."""
    target: str
    """The request-target exactly as sent: ``"/x?y"``, ``"http://a/x"``, ``"a:443"`` or ``"*"``."""
    version: tuple[int, int]
    """``(1, 0)`` or ``(1, 1)``."""
    headers: tuple[tuple[str, str], ...]
    """Field lines in order: names lower-cased, values stripped of SP/HTAB and decoded as Latin-1."""
    host: str | None
    """Where the request is going, lower-cased, without port or IPv6 brackets: from the target's
    authority when it has one (absolute-form, CONNECT), else from Host; ``None`` if neither
    names a host (HTTP/1.0 without Host, or an empty Host)."""
    port: int | None
    """The port from the same authority, if one was given."""
    authority: str | None
    """For CONNECT, the authority-form target ``"host:port"`` as sent; ``None`` otherwise."""
    length: int
    """Bytes from the start of the data up to and including the blank line that ends the head."""


def parse(
    data: bytes | bytearray | memoryview,
    *,
    max_head: int = DEFAULT_MAX_HEAD,
    max_line: int = DEFAULT_MAX_LINE,
) -> RequestHead | NeedData:
    """Recognise an HTTP/1.x request head at the start of ``data``.

    Args:
        data: every byte received so far on the connection, from its first byte.
        max_head: the longest head accepted, blank line included.
        max_line: the longest line accepted, CRLF excluded.

    Returns:
        ``NEED_DATA`` if more bytes are needed, otherwise the :class:`RequestHead` (see the
        module docstring).

    Raises:
        HeadError: the bytes are not an acceptable head; ``hint`` is the status to answer.
    """
    window = bytes(data[:max_head])
    start = 0
    while window.startswith(b"\r\n", start):  # RFC 9112 §2.2: skip empty lines before the request
        start += 2
    end = window.find(b"\r\n\r\n", start)
    if end >= 0:  # framing is checked by the grammar on the way (see _parse_head)
        return _parse_head(window, start, end + 2, max_line)
    _check_framing(window, incomplete=True)
    lines = window[start:].split(b"\r\n")
    _check_prefix(lines, max_line)
    if len(window) >= max_head:
        raise HeadError(
            f"request head has no blank line within the first {max_head} bytes",
            hint=_FIELDS_TOO_LARGE,
        )
    return NEED_DATA


def _show(raw: bytes | str, limit: int = 60) -> str:
    """Quote untrusted input for an error message, shortened."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def _check_framing(raw: bytes, *, incomplete: bool = False) -> None:
    """Refuse a bare LF or a bare CR (one not followed by LF); a final CR may still get its LF."""
    pairs = raw.count(b"\r\n")
    if raw.count(b"\n") != pairs:
        at = raw.find(b"\n")
        while at > 0 and raw[at - 1] == 0x0D:
            at = raw.find(b"\n", at + 1)
        raise HeadError(
            f"request head has a bare LF at byte {at}; lines must end with CRLF: "
            f"{_show(raw[max(0, at - 40) : at + 1])}"
        )
    crs = raw.count(b"\r") - (1 if incomplete and raw.endswith(b"\r") else 0)
    if crs != pairs:
        at = raw.find(b"\r")
        while raw.startswith(b"\r\n", at):
            at = raw.find(b"\r", at + 1)
        raise HeadError(
            f"request head has a bare CR at byte {at}; lines must end with CRLF: "
            f"{_show(raw[max(0, at - 40) : at + 2])}"
        )


def _check_prefix(lines: list[bytes], max_line: int) -> None:
    """Check a head whose blank line has not arrived: complete lines fully, the last so far."""
    partial = lines[-1].removesuffix(b"\r")
    if len(lines) == 1:
        if len(partial) > max_line:
            raise HeadError(
                f"request line is longer than {max_line} bytes: {_show(partial)}", hint=_URI_TOO_LONG
            )
        _check_request_line_prefix(partial)
        return
    _request_line(lines[0], max_line)
    hosts = 0
    for number, line in enumerate(lines[1:-1], 1):
        name, _ = _field_line(line, number, max_line)
        hosts += name == "host"
        if hosts > 1:
            raise HeadError("request has more than one Host field; exactly one is allowed")
    if len(partial) > max_line:
        raise HeadError(
            f"field line {len(lines) - 1} is longer than {max_line} bytes: {_show(partial)}",
            hint=_FIELDS_TOO_LARGE,
        )
    if partial:
        _check_field_prefix(partial, len(lines) - 1)


def _check_request_line_prefix(partial: bytes) -> None:
    method, space, rest = partial.partition(b" ")
    if not _TOKEN_PREFIX.fullmatch(method) or (space and not method):
        raise HeadError(f"request method is not a token: {_show(partial)}")
    target, space, version = rest.partition(b" ")
    if _TARGET_BAD.search(target) or (space and not target):
        raise HeadError(f"request-target contains a byte outside printable ASCII: {_show(partial)}")
    if space and not _VERSION_PREFIX.fullmatch(version):
        raise HeadError(f"request line does not end with HTTP/<digit>.<digit>: {_show(partial)}")


def _check_field_prefix(partial: bytes, number: int) -> None:
    colon = partial.find(b":")
    if colon < 0:
        if _TOKEN_PREFIX.fullmatch(partial):
            return
        _field_line(partial + b":", number, len(partial) + 1)  # raises with the diagnosis
    _field_line(partial[: colon + 1], number, len(partial))
    if _VALUE_BAD.search(partial, colon):
        _field_line(partial, number, len(partial))


def _request_line(line: bytes, max_line: int) -> tuple[str, str, tuple[int, int]]:
    if len(line) > max_line:
        raise HeadError(f"request line is longer than {max_line} bytes: {_show(line)}", hint=_URI_TOO_LONG)
    parts = line.split(b" ")
    if len(parts) != 3:
        _check_request_line_prefix(line)  # a more precise message when there is one
        raise HeadError(f"request line must be 'method SP request-target SP HTTP-version': {_show(line)}")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HeadError(f"request method is not a token: {_show(method)}")
    if not target or _TARGET_BAD.search(target):
        raise HeadError(f"request-target contains a byte outside printable ASCII: {_show(target)}")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HeadError(f"request line does not end with HTTP/<digit>.<digit>: {_show(line)}")
    number = (int(match[1]), int(match[2]))
    if line == b"PRI * HTTP/2.0":
        raise HeadError(
            "client sent the HTTP/2 connection preface (prior knowledge); this port speaks HTTP/1.x",
            hint=_VERSION_NOT_SUPPORTED,
        )
    if number not in _SUPPORTED:
        raise HeadError(
            f"HTTP version {number[0]}.{number[1]} is not supported; only 1.0 and 1.1 are",
            hint=_VERSION_NOT_SUPPORTED,
        )
    return method.decode("ascii"), target.decode("ascii"), number


def _field_line(line: bytes, number: int, max_line: int) -> tuple[str, str]:
    if len(line) > max_line:
        raise HeadError(
            f"field line {number} is longer than {max_line} bytes: {_show(line)}", hint=_FIELDS_TOO_LARGE
        )
    match = _FIELD_LINE.fullmatch(line)
    if match is not None and not _VALUE_BAD.search(match[2]):
        return match[1].decode("ascii").lower(), match[2].decode("latin-1")
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: obs-fold is refused with 400 outside message/http; §2.2: whitespace
        # between the start-line and the first field "MUST" be rejected or consumed.
        where = "whitespace after the request line" if number == 1 else "an obs-fold continuation line"
        raise HeadError(f"field line {number} starts with {where}: {_show(line)}")
    name, colon, _ = line.partition(b":")
    if not colon:
        raise HeadError(f"field line {number} has no colon: {_show(line)}")
    if name != name.rstrip(b" \t"):
        # RFC 9112 §5.1: "A server MUST reject, with a response status code of 400 (Bad Request),
        # any received request message that contains whitespace between a header field name and colon."
        raise HeadError(f"field line {number} has whitespace before the colon: {_show(line)}")
    if not _TOKEN.fullmatch(name):
        raise HeadError(f"field line {number} has a name that is not a token: {_show(name)}")
    raise HeadError(f"field line {number} has a control character in its value: {_show(line)}")


def _parse_head(window: bytes, start: int, end: int, max_line: int) -> RequestHead:
    """Parse the complete head ``window[start:end]`` (CRLF-terminated lines, blank line excluded)."""
    line_end = window.find(b"\r\n", start)
    line = window[start:line_end]
    if len(line) <= max_line and _REQUEST_LINE.fullmatch(line):  # the fast path
        method_bytes, target_bytes, _ = line.split(b" ")
        method, target = method_bytes.decode("ascii"), target_bytes.decode("ascii")
        version = (1, line[-1] - 0x30)  # the regex allows only HTTP/1.0 and HTTP/1.1 here
    else:
        _check_framing(window[: end + 2])
        method, target, version = _request_line(line, max_line)
    block = window[line_end + 2 : end]
    if not _FIELD_BLOCK.fullmatch(block) or (
        len(block) > max_line and any(len(field) > max_line for field in block.split(b"\r\n"))
    ):
        _check_framing(window[: end + 2])
        for number, field in enumerate(block.split(b"\r\n")[:-1], 1):
            _field_line(field, number, max_line)  # raises with the diagnosis
    headers = tuple(
        (name.lower(), value.strip(" \t"))
        for name, _, value in (field.partition(":") for field in block.decode("latin-1").split("\r\n")[:-1])
    )
    host_values = [value for name, value in headers if name == "host"]
    if len(host_values) > 1:
        raise HeadError(f"request has more than one Host field ({len(host_values)}); one is allowed")
    host: str | None = None
    port: int | None = None
    if host_values:
        host, port = _host_port(host_values[0], "Host", need_port=False)
    elif version == (1, 1):
        raise HeadError("HTTP/1.1 request has no Host field")
    authority = None
    if method == "CONNECT":
        # RFC 9112 §3.2.3: authority-form = uri-host ":" port, only for CONNECT.
        authority = target
        if target.startswith("/") or ":" not in target:
            raise HeadError(f"CONNECT target {_show(target)} must be host:port (authority-form)")
        host, port = _host_port(target, "CONNECT target", need_port=True)
    elif target.startswith("/"):
        pass  # origin-form
    elif target == "*":
        if method != "OPTIONS":  # RFC 9112 §3.2.4: asterisk-form is only for OPTIONS
            raise HeadError(f"request-target '*' is only allowed with OPTIONS, not {method}")
    else:
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise HeadError(
                f"request-target {_show(target)} is neither origin-form ('/path') nor absolute-form "
                "('scheme://authority/path')"
            )
        if "@" in absolute[2]:
            # RFC 9110 §4.2.4: "A recipient SHOULD parse for userinfo and treat its presence as an error".
            raise HeadError(f"request-target {_show(target)} has userinfo, which HTTP forbids")
        host, port = _host_port(absolute[2], "request-target authority", need_port=False)
        if host is None:
            # RFC 9110 §4.2.1: an http URI with an empty host "MUST" be rejected as invalid.
            raise HeadError(f"request-target {_show(target)} has an empty host")
    return RequestHead(method, target, version, headers, host, port, authority, end + 2)


def _host_port(text: str, what: str, *, need_port: bool) -> tuple[str | None, int | None]:
    """Split ``uri-host [":" port]`` (RFC 3986 §3.2.2-3); host lower-cased, brackets removed."""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if close < 0 or not _IPV6_TEXT.fullmatch(host):
            raise HeadError(f"{what} {_show(text)} is not a bracketed IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HeadError(f"{what} {_show(text)} is not a bracketed IPv6 address") from None
    else:
        if text.count(":") > 1:
            raise HeadError(f"{what} {_show(text)} has more than one colon; IPv6 needs [brackets]")
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not _REG_NAME.fullmatch(host):
            raise HeadError(f"{what} {_show(text)} has a host with characters a host name cannot have")
    port = None
    if rest:
        if not rest.startswith(":") or (rest != ":" and not _PORT.fullmatch(rest, 1)):
            raise HeadError(f"{what} {_show(text)} has a port that is not a number 0-65535")
        port = int(rest[1:]) if rest != ":" else None
        if port is not None and port > 65535:
            raise HeadError(f"{what} {_show(text)} has a port that is not a number 0-65535")
    if need_port and port is None:
        raise HeadError(f"{what} {_show(text)} must be host:port")
    if not host:
        if rest:
            raise HeadError(f"{what} {_show(text)} has a port but no host")
        return None, None
    return host.lower(), port
