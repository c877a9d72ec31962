"""TLS ClientHello: read the server name, ALPN and versions without decrypting, sans-IO.

Specs (quoted below by number): RFC 8446 (TLS 1.3) §5.1 records, §4.1.2 ClientHello, §4.2
extensions; RFC 6066 §3 server_name; RFC 7301 ALPN; RFC 8701 GREASE.

Contract of :func:`parse`. It is given every byte received so far from the start of a
connection (the caller has already seen that the first byte is 0x16, a handshake record) and
never consumes anything: it is a pure function of those bytes. It answers in one of three ways:

1. ``NEED_DATA``: the bytes so far are a proper prefix of a possible ClientHello; read more.
2. A :class:`ClientHello`: complete and valid. ``hello.length`` is where the TLS record that
   held its last byte ends; bytes after that were not looked at. The caller still replays
   *every* byte to the backend, since the backend has to see the handshake too.
3. :class:`ClientHelloError`: the bytes are not a ClientHello we accept. ``error.alert`` is the
   RFC 8446 alert number and ``error.hint`` its name; :func:`alert_record` builds the fatal
   alert to send before closing.

Rules: a result other than ``NEED_DATA`` never changes when more bytes arrive, and errors about
the record layer and the handshake header are raised as soon as the bytes that show them
arrive; the ClientHello body is checked once it is complete. ``max_size`` bounds what the caller
must buffer: a hello whose records (headers included) would exceed it is refused as soon as a
length field says so, so ``hello.length <= max_size`` always holds.

Alerts chosen (RFC 8446 §6.2 gives the meanings; OpenSSL's choices break ties):

=====================  ==============================================================
unexpected_message 10  first byte not 0x16; a non-handshake record before the hello is
                       complete; handshake type not client_hello; bytes after the hello
                       in its last record (nothing may follow it in the first flight)
record_overflow 22     a record longer than 2^14 (RFC 8446 §5.1 names this alert)
protocol_version 70    record version outside 0x0300-0x0304, or legacy_version below 0x0300
illegal_parameter 47   handshake longer than ``max_size`` (OpenSSL: EXCESSIVE_MESSAGE_SIZE);
                       duplicate extension; a second host_name, or none in a server_name
                       list; a host_name with a trailing dot, non-ASCII bytes, spaces or
                       control characters
decode_error 50        zero-length record, and every length or range error inside the body:
                       truncated vectors, odd cipher_suites, empty compression_methods,
                       empty server_name list or name, empty ALPN list or name, bytes left
                       over after a field
=====================  ==============================================================

``unrecognized_name`` (112) and ``handshake_failure`` (40) are never raised here; they are for
the routing layer (no route for the name; no SNI where one is required).
"""

import enum
import math
from dataclasses import dataclass
from typing import Final

from portway.errors import ProtocolError
from portway.proto import NEED_DATA, NeedData

__all__ = [
    "MAX_RECORD_LENGTH",
    "NEED_DATA",
    "Alert",
    "ClientHello",
    "ClientHelloError",
    "NeedData",
    "alert_record",
    "parse",
]

CONTENT_HANDSHAKE: Final = 22
CONTENT_ALERT: Final = 21
HANDSHAKE_CLIENT_HELLO: Final = 1
MAX_RECORD_LENGTH: Final = 2**14
"""RFC 8446 §5.1: "The length (in bytes) of the following TLSPlaintext.fragment. The length
MUST NOT exceed 2^14 bytes."""

EXT_SERVER_NAME: Final = 0
EXT_ALPN: Final = 16
EXT_SUPPORTED_VERSIONS: Final = 43
EXT_ENCRYPTED_CLIENT_HELLO: Final = 0xFE0D
_HOST_NAME: Final = 0
_RECORD_HEADER: Final = 5
_HANDSHAKE_HEADER: Final = 4


class Alert(enum.IntEnum):
    """TLS alert descriptions (RFC 8446 §6) that this module and its callers use."""

    UNEXPECTED_MESSAGE = 10
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    ILLEGAL_PARAMETER = 47
    DECODE_ERROR = 50
    PROTOCOL_VERSION = 70
    UNRECOGNIZED_NAME = 112


class ClientHelloError(ProtocolError):
    """The bytes are not a ClientHello Portway accepts; send ``alert_record(error.alert)`` and close.

    ``hint`` is the alert's RFC name (``"decode_error"``), ``alert`` its number (an
    :class:`Alert`, which is an ``int``). ``str(error)`` says what was wrong.
    """

    alert: Alert
    """The fatal alert to send."""

    def __init__(self, message: str, *, alert: Alert) -> None:
        super().__init__(message, hint=alert.name.lower())
        self.alert = alert

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_error, (str(self), int(self.alert))


def _rebuild_error(message: str, alert: int) -> ClientHelloError:
    return ClientHelloError(message, alert=Alert(alert))


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs from a TLS ClientHello. Nothing here is authenticated."""

    server_name: str | None
    """The SNI host_name, lower-cased, IDNA ``xn--`` labels as sent; ``None`` without SNI."""
    alpn: tuple[str, ...]
    """ALPN protocol names in client order, GREASE values dropped; decoded as Latin-1 so that
    ``name.encode("latin-1")`` gives the wire bytes back. ``()`` without the extension."""
    supported_versions: tuple[int, ...]
    """The supported_versions extension in client order (``0x0304`` is TLS 1.3), GREASE
    dropped; ``()`` without the extension (a client that offers TLS 1.2 at most)."""
    legacy_version: int
    """The ``legacy_version`` (client_version) field, ``0x0303`` for TLS 1.2 and 1.3 clients."""
    has_ech: bool
    """True if an encrypted_client_hello extension (0xfe0d) is present, real or GREASE. The
    routing name is still the outer ``server_name``."""
    length: int
    """Bytes of TLS records, from the start, that held the complete ClientHello."""


def parse(data: bytes | bytearray | memoryview, *, max_size: int = 65536) -> ClientHello | NeedData:
    """Recognise the ClientHello at the start of ``data``.

    Args:
        data: every byte received so far on the connection, from its first byte.
        max_size: the most record bytes (headers included) the hello may occupy.

    Returns:
        ``NEED_DATA`` if more bytes are needed, otherwise the :class:`ClientHello`.

    Raises:
        ClientHelloError: not a ClientHello, or a malformed one (see the module docstring).
        ValueError: ``max_size`` is below 9, too small for any hello.
    """
    if max_size < _RECORD_HEADER + _HANDSHAKE_HEADER:
        raise ValueError(f"max_size {max_size} cannot hold even a record and a handshake header")
    # Fast path: the usual hello, whole in one record that holds nothing else, parsed by
    # _fast_body; anything it does not vouch for goes through the strict path below, which
    # gives the same answer or says exactly what is wrong.
    if len(data) >= 9 and data[0] == CONTENT_HANDSHAKE and data[1] == 0x03 and data[2] <= 0x04:
        record_length = data[3] << 8 | data[4]
        end = _RECORD_HEADER + record_length
        if (
            0 < record_length <= MAX_RECORD_LENGTH
            and end <= max_size
            and len(data) >= end
            and data[5] == HANDSHAKE_CLIENT_HELLO
            and (data[6] << 16 | data[7] << 8 | data[8]) + _HANDSHAKE_HEADER == record_length
        ):
            fast = _fast_body(bytes(data[_RECORD_HEADER + _HANDSHAKE_HEADER : end]), end)
            if fast is not None:
                return fast
    raw = bytes(data[:max_size])
    message = bytearray()  # the handshake message reassembled from record fragments
    announced = 0  # fragment bytes the record headers seen so far announce
    pos = 0
    while True:
        header = raw[pos : pos + _RECORD_HEADER]
        _check_record_header(header, pos)
        if len(header) < _RECORD_HEADER:
            return NEED_DATA
        record_length = int.from_bytes(header[3:5])
        end = pos + _RECORD_HEADER + record_length
        announced += record_length
        if end > max_size:
            raise ClientHelloError(
                f"TLS ClientHello records would run past the {max_size}-byte limit (the record at "
                f"byte {pos} ends at byte {end})",
                alert=Alert.ILLEGAL_PARAMETER,
            )
        message += raw[pos + _RECORD_HEADER : end]
        total = _check_handshake_header(bytes(message[:_HANDSHAKE_HEADER]), max_size)
        if total is not None and announced > total:
            raise ClientHelloError(
                f"TLS record ending at byte {end} carries {announced - total} bytes after the "
                f"{total}-byte ClientHello; nothing may follow it in the client's first flight",
                alert=Alert.UNEXPECTED_MESSAGE,
            )
        if len(raw) < end:
            return NEED_DATA
        if total is not None and len(message) == total:
            return _parse_body(bytes(message[_HANDSHAKE_HEADER:]), length=end)
        pos = end


def _check_record_header(header: bytes, pos: int) -> None:
    """Validate a TLSPlaintext header (RFC 8446 §5.1) as far as it has arrived."""
    if len(header) > 0 and header[0] != CONTENT_HANDSHAKE:
        where = "first byte" if pos == 0 else f"record at byte {pos}"
        raise ClientHelloError(
            f"TLS {where} has content type {header[0]}, not 22 (handshake), before the ClientHello "
            "is complete",
            alert=Alert.UNEXPECTED_MESSAGE,
        )
    if (len(header) > 1 and header[1] != 0x03) or (len(header) > 2 and header[2] > 0x04):
        version = header[1:3].hex()
        raise ClientHelloError(
            f"TLS record at byte {pos} has version 0x{version}; expected 0x0300 to 0x0304",
            alert=Alert.PROTOCOL_VERSION,
        )
    if len(header) == _RECORD_HEADER:
        length = int.from_bytes(header[3:5])
        if length == 0:
            # RFC 8446 §5.1: "Implementations MUST NOT send zero-length fragments of Handshake types".
            raise ClientHelloError(
                f"TLS handshake record at byte {pos} is empty; zero-length handshake fragments are forbidden",
                alert=Alert.DECODE_ERROR,
            )
        if length > MAX_RECORD_LENGTH:
            # RFC 8446 §5.1: "An endpoint that receives a record that exceeds this length MUST
            # terminate the connection with a "record_overflow" alert."
            raise ClientHelloError(
                f"TLS record at byte {pos} declares {length} bytes; the limit is {MAX_RECORD_LENGTH}",
                alert=Alert.RECORD_OVERFLOW,
            )


def _check_handshake_header(header: bytes, max_size: int) -> int | None:
    """Validate the Handshake header (RFC 8446 §4) so far; return the message's total size."""
    if len(header) > 0 and header[0] != HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError(
            f"TLS handshake message has type {header[0]}, not 1 (client_hello)",
            alert=Alert.UNEXPECTED_MESSAGE,
        )
    if len(header) < _HANDSHAKE_HEADER:
        return None
    total = _HANDSHAKE_HEADER + int.from_bytes(header[1:4])
    # Fewest record bytes that can carry it: one 5-byte header per 2^14 bytes of fragment.
    smallest = total + _RECORD_HEADER * math.ceil(total / MAX_RECORD_LENGTH)
    if smallest > max_size:
        raise ClientHelloError(
            f"TLS ClientHello declares {total - _HANDSHAKE_HEADER} bytes, which needs at least "
            f"{smallest} bytes of records; the limit is {max_size}",
            alert=Alert.ILLEGAL_PARAMETER,
        )
    return total


class _Reader:
    """A cursor over one length-delimited part of the ClientHello; every short read is decode_error.

    Error messages are built only when a read fails: this runs once per connection, and
    formatting a field name per read cost more than the parsing itself.
    """

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def _short(self, n: int, field: str) -> ClientHelloError:
        return _decode_error(f"{self.what} {field} needs {n} bytes but only {self.left} remain")

    def take(self, n: int, field: str) -> bytes:
        pos = self.pos
        end = pos + n
        if end > len(self.data):
            raise self._short(n, field)
        self.pos = end
        return self.data[pos:end]

    def integer(self, size: int, field: str, suffix: str = "") -> int:
        data = self.data
        pos = self.pos
        end = pos + size
        if end > len(data):
            raise self._short(size, field + suffix)
        self.pos = end
        if size == 1:
            return data[pos]
        if size == 2:
            return data[pos] << 8 | data[pos + 1]
        return int.from_bytes(data[pos:end])

    def vector(self, length_size: int, field: str, minimum: int = 0) -> bytes:
        """Read ``opaque field<minimum..2^(8*length_size)-1>``."""
        value = self.take(self.integer(length_size, field, " length"), field)
        if len(value) < minimum:
            raise _decode_error(f"{self.what} {field} has {len(value)} bytes; at least {minimum} required")
        return value

    def done(self) -> None:
        if self.left:
            raise _decode_error(f"{self.what} has {self.left} stray bytes at its end")


def _decode_error(message: str) -> ClientHelloError:
    return ClientHelloError(f"TLS {message}", alert=Alert.DECODE_ERROR)


def _is_grease(value: int) -> bool:
    """RFC 8701 §2: GREASE values are 0x0A0A, 0x1A1A, ... 0xFAFA (both bytes 0x?A, equal)."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _parse_body(body: bytes, *, length: int) -> ClientHello:
    # RFC 8446 §4.1.2:
    #   struct {
    #       ProtocolVersion legacy_version = 0x0303;    /* TLS v1.2 */
    #       Random random;
    #       opaque legacy_session_id<0..32>;
    #       CipherSuite cipher_suites<2..2^16-2>;
    #       opaque legacy_compression_methods<1..2^8-1>;
    #       Extension extensions<8..2^16-1>;
    #   } ClientHello;
    hello = _Reader(body, "ClientHello")
    legacy_version = hello.integer(2, "legacy_version")
    if legacy_version >> 8 != 0x03:
        raise ClientHelloError(
            f"TLS ClientHello legacy_version is 0x{legacy_version:04x}; SSL 3.0 (0x0300) or later required",
            alert=Alert.PROTOCOL_VERSION,
        )
    hello.take(32, "random")
    session_id = hello.vector(1, "legacy_session_id")
    if len(session_id) > 32:
        raise _decode_error(f"ClientHello legacy_session_id has {len(session_id)} bytes; at most 32 allowed")
    cipher_suites = hello.vector(2, "cipher_suites", minimum=2)
    if len(cipher_suites) % 2:
        raise _decode_error(
            f"ClientHello cipher_suites has {len(cipher_suites)} bytes; it must be an even number"
        )
    hello.vector(1, "legacy_compression_methods", minimum=1)
    extensions: dict[int, bytes] = {}
    # RFC 5246 §7.4.1.2: the extensions field may be absent ("the presence of extensions can
    # be detected by determining whether there are bytes following the compression_methods").
    if hello.left:
        # The extension loop is the hot part of the parse: plain indexing, messages built
        # only on failure (worded as _Reader words them).
        ext = hello.vector(2, "extensions")
        n = len(ext)
        i = 0
        while i < n:
            if n - i < 2:
                raise _decode_error(
                    f"ClientHello extensions extension type needs 2 bytes but only {n - i} remain"
                )
            ext_type = ext[i] << 8 | ext[i + 1]
            if n - i < 4:
                raise _decode_error(
                    f"ClientHello extensions extension 0x{ext_type:04x} data length needs 2 bytes "
                    f"but only {n - i - 2} remain"
                )
            size = ext[i + 2] << 8 | ext[i + 3]
            i += 4
            if size > n - i:
                raise _decode_error(
                    f"ClientHello extensions extension 0x{ext_type:04x} data needs {size} bytes "
                    f"but only {n - i} remain"
                )
            # RFC 8446 §4.2: "There MUST NOT be more than one extension of the same type in a
            # given extension block." (GREASE types are ordinary types for this rule.)
            if ext_type in extensions:
                raise ClientHelloError(
                    f"TLS ClientHello has the extension 0x{ext_type:04x} twice", alert=Alert.ILLEGAL_PARAMETER
                )
            extensions[ext_type] = ext[i : i + size]
            i += size
    hello.done()
    server_name = _server_name(extensions[EXT_SERVER_NAME]) if EXT_SERVER_NAME in extensions else None
    alpn = _alpn(extensions[EXT_ALPN]) if EXT_ALPN in extensions else ()
    versions = _versions(extensions[EXT_SUPPORTED_VERSIONS]) if EXT_SUPPORTED_VERSIONS in extensions else ()
    return ClientHello(
        server_name=server_name,
        alpn=alpn,
        supported_versions=versions,
        legacy_version=legacy_version,
        has_ech=EXT_ENCRYPTED_CLIENT_HELLO in extensions,
        length=length,
    )


_SNI_BYTES: Final = bytes(range(0x21, 0x7F))
"""The bytes a host_name may hold (printable ASCII, no space)."""


def _fast_body(body: bytes, length: int) -> ClientHello | None:
    """The ClientHello in ``body`` when it is well-formed in the usual way, else ``None``.

    Plain indexing, no messages: the fast path of :func:`parse`. It must never accept what
    :func:`_parse_body` rejects, nor answer differently (a property test holds it to that);
    returning ``None`` for an unusual but valid hello is fine, the strict path then decides.
    """
    n = len(body)
    if n < 39 or body[0] != 0x03:
        return None
    i = 34 + 1 + body[34]  # version, random, legacy_session_id
    if body[34] > 32 or i + 2 > n:
        return None
    suites = body[i] << 8 | body[i + 1]
    if suites < 2 or suites & 1:
        return None
    i += 2 + suites
    if i + 1 > n or body[i] < 1:
        return None
    i += 1 + body[i]  # legacy_compression_methods
    if i + 2 > n or i + 2 + (body[i] << 8 | body[i + 1]) != n:
        return None
    i += 2
    seen: set[int] = set()
    sni = alpn = versions = None
    while i < n:
        if n - i < 4:
            return None
        ext_type = body[i] << 8 | body[i + 1]
        end = i + 4 + (body[i + 2] << 8 | body[i + 3])
        if end > n or ext_type in seen:
            return None
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            sni = body[i + 4 : end]
        elif ext_type == EXT_ALPN:
            alpn = body[i + 4 : end]
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            versions = body[i + 4 : end]
        i = end
    server_name: str | None = None
    if sni is not None:
        # One host_name entry filling the list: 2-byte list length, type 0, 2-byte name length.
        size = len(sni)
        if size < 6 or (sni[0] << 8 | sni[1]) != size - 2 or sni[2] != _HOST_NAME:
            return None
        if (sni[3] << 8 | sni[4]) != size - 5:
            return None
        name = sni[5:]
        if name.translate(None, _SNI_BYTES) or name.endswith(b"."):
            return None
        server_name = name.decode("ascii").lower()
    protocols: tuple[str, ...] = ()
    if alpn is not None:
        size = len(alpn)
        if size < 4 or (alpn[0] << 8 | alpn[1]) != size - 2:
            return None
        names: list[str] = []
        j = 2
        while j < size:
            k = j + 1 + alpn[j]
            if alpn[j] == 0 or k > size:
                return None
            if not (k - j == 3 and alpn[j + 1] == alpn[j + 2] and alpn[j + 1] & 0x0F == 0x0A):
                names.append(alpn[j + 1 : k].decode("latin-1"))
            j = k
        protocols = tuple(names)
    supported: tuple[int, ...] = ()
    if versions is not None:
        size = len(versions)
        if size < 3 or versions[0] != size - 1 or not size & 1:
            return None
        every = (versions[j] << 8 | versions[j + 1] for j in range(1, size, 2))
        supported = tuple(v for v in every if not _is_grease(v))
    return ClientHello(
        server_name=server_name,
        alpn=protocols,
        supported_versions=supported,
        legacy_version=body[0] << 8 | body[1],
        has_ech=EXT_ENCRYPTED_CLIENT_HELLO in seen,
        length=length,
    )


def _server_name(data: bytes) -> str:
    # RFC 6066 §3:
    #   struct { NameType name_type; select (name_type) { case host_name: HostName; } name; } ServerName;
    #   opaque HostName<1..2^16-1>;
    #   struct { ServerName server_name_list<1..2^16-1> } ServerNameList;
    # Unknown name types are read as 2-byte-length opaques (the only encoding ever deployed)
    # and skipped.
    extension = _Reader(data, "server_name extension")
    entries = _Reader(extension.vector(2, "server_name_list", minimum=1), "server_name_list")
    extension.done()
    host_name: bytes | None = None
    while entries.left:
        name_type = entries.integer(1, "name_type")
        name = entries.vector(2, f"name of type {name_type}", minimum=1)
        if name_type != _HOST_NAME:
            continue
        # RFC 6066 §3: "The ServerNameList MUST NOT contain more than one name of the same name_type."
        if host_name is not None:
            raise ClientHelloError(
                f"TLS server_name lists two host_names ({_show(host_name)} and {_show(name)})",
                alert=Alert.ILLEGAL_PARAMETER,
            )
        host_name = name
    if host_name is None:
        raise ClientHelloError(
            "TLS server_name extension has no host_name entry", alert=Alert.ILLEGAL_PARAMETER
        )
    # RFC 6066 §3: "The hostname is represented as a byte string using ASCII encoding without
    # a trailing dot." Spaces and control bytes are refused too: no DNS name has them, and a
    # NUL could cut the name short in a log or a C library.
    bad = next((b for b in host_name if not 0x21 <= b <= 0x7E), None)
    if bad is not None:
        raise ClientHelloError(
            f"TLS server_name host_name {_show(host_name)} has the byte 0x{bad:02x}; only printable "
            "ASCII is allowed (IDNA names are sent as xn-- labels)",
            alert=Alert.ILLEGAL_PARAMETER,
        )
    if host_name.endswith(b"."):
        raise ClientHelloError(
            f"TLS server_name host_name {_show(host_name)} ends with a dot; RFC 6066 forbids that",
            alert=Alert.ILLEGAL_PARAMETER,
        )
    return host_name.decode("ascii").lower()


def _alpn(data: bytes) -> tuple[str, ...]:
    # RFC 7301 §3.1:
    #   opaque ProtocolName<1..2^8-1>;
    #   struct { ProtocolName protocol_name_list<2..2^16-1> } ProtocolNameList;
    extension = _Reader(data, "ALPN extension")
    names = _Reader(extension.vector(2, "protocol_name_list", minimum=2), "ALPN protocol_name_list")
    extension.done()
    protocols: list[str] = []
    while names.left:
        name = names.vector(1, "protocol name", minimum=1)
        if not (len(name) == 2 and _is_grease(int.from_bytes(name))):
            protocols.append(name.decode("latin-1"))
    return tuple(protocols)


def _versions(data: bytes) -> tuple[int, ...]:
    # RFC 8446 §4.2.1: struct { ProtocolVersion versions<2..254>; } SupportedVersions; (ClientHello)
    extension = _Reader(data, "supported_versions extension")
    versions = extension.vector(1, "versions", minimum=2)
    extension.done()
    if len(versions) % 2:
        raise _decode_error(f"supported_versions has {len(versions)} bytes; it must be an even number")
    every = (int.from_bytes(versions[i : i + 2]) for i in range(0, len(versions), 2))
    return tuple(v for v in every if not _is_grease(v))


def _show(raw: bytes, limit: int = 60) -> str:
    """Quote untrusted input for an error message, shortened."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def alert_record(alert: int, version: int = 0x0303) -> bytes:
    """Return a fatal TLS alert record: content type 21, ``version``, length 2, level 2, ``alert``.

    RFC 8446 §6: ``struct { AlertLevel level; AlertDescription description; } Alert;`` with
    ``fatal(2)``. It is sent in plaintext, since no keys exist yet.

    Raises:
        ValueError: ``alert`` is outside 0-255 or ``version`` outside 0-65535.
    """
    if not 0 <= alert <= 255:
        raise ValueError(f"alert {alert} is outside 0-255")
    if not 0 <= version <= 0xFFFF:
        raise ValueError(f"record version {version} is outside 0-65535")
    return bytes([CONTENT_ALERT]) + version.to_bytes(2) + b"\x00\x02" + bytes([2, alert])
