"""HAProxy PROXY protocol, versions 1 and 2: parse and build, sans-IO.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (quoted below as "spec").

Contract of :func:`parse`. It is given every byte received so far from the start of a
connection and never consumes or copies more than the header. It answers in one of four ways:

1. ``NEED_DATA``: the bytes so far are a proper prefix of a possible header; read more.
2. ``None``: the bytes cannot start a header (they diverge from both the v1 ``b"PROXY"`` and
   the v2 signature); every byte is application data. This is decided as soon as the first
   diverging byte arrives. Spec: ``PROXY`` alone "indicates that this is version 1", so
   ``b"PROXYX"`` is a malformed header, not application data. Whether a connection without
   a header is acceptable is the caller's policy; the spec says a receiver "MUST not try to
   guess", so a listener that requires PROXY should refuse on ``None``.
3. A :class:`ProxyHeader`: complete and valid. Strip ``header.length`` bytes; whatever follows
   is application data and was not looked at.
4. :class:`ProxyHeaderError`: it starts like a header but is malformed. Drop the connection.

Rules: a result other than ``NEED_DATA`` never changes when more bytes arrive, and errors are
raised as early as the bytes allow ("It is recommended to abort the connection as soon as
possible"). Only the address families Portway can use become addresses: TCP over IPv4/IPv6.
Everything else valid (v1 ``UNKNOWN``, v2 ``LOCAL``, ``AF_UNSPEC``, ``AF_UNIX``, UDP) parses
with ``source`` and ``destination`` set to ``None``, which means "use the real connection
endpoints" (spec: a receiver may "fall back to the UNSPEC mode for the valid combinations
above that it does not support").

The builders :func:`build_v1` and :func:`build_v2` raise :class:`ValueError` for arguments
that cannot be encoded; that is a programming error, not a protocol error.
"""

import ipaddress
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Final, TypeAlias

from portway.errors import ProtocolError
from portway.proto import NEED_DATA, NeedData

__all__ = [
    "NEED_DATA",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX_LENGTH",
    "V1_SIGNATURE",
    "V2_SIGNATURE",
    "Address",
    "NeedData",
    "ProxyHeader",
    "ProxyHeaderError",
    "build_v1",
    "build_v2",
    "crc32c",
    "parse",
]

Address: TypeAlias = tuple[str, int]
"""An endpoint as Python's socket module gives it: ``(host, port)``."""

V1_SIGNATURE: Final = b"PROXY"
"""The first five bytes of every version 1 header.

Spec: "Seeing this string indicates that this is version 1 of the protocol."
"""
V1_MAX_LENGTH: Final = 107
"""Spec: "If the CRLF sequence is not found in the first 107 characters, the receiver should
declare the line invalid." (the worst case ``PROXY UNKNOWN <ipv6> <ipv6> 65535 65535\\r\\n``)."""
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12-byte signature that starts every version 2 header."""

PP2_TYPE_ALPN: Final = 0x01
"""TLV: the negotiated ALPN protocol."""
PP2_TYPE_AUTHORITY: Final = 0x02
"""TLV: the host name the client asked for (TLS SNI), UTF-8."""
PP2_TYPE_CRC32C: Final = 0x03
"""TLV: CRC32c of the whole header; :func:`parse` verifies it, :func:`build_v2` computes it."""
PP2_TYPE_NOOP: Final = 0x04
"""TLV: padding, to be ignored."""
PP2_TYPE_UNIQUE_ID: Final = 0x05
"""TLV: an opaque connection id of up to 128 bytes."""
PP2_TYPE_SSL: Final = 0x20
"""TLV: client TLS details, itself containing sub-TLVs (kept raw here)."""
PP2_TYPE_NETNS: Final = 0x30
"""TLV: the network namespace name."""

_V2_HEADER_LENGTH: Final = 16
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_ADDRESS_LENGTH: Final = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}  # family -> address block size
_V2_TCP4, _V2_TCP6 = 0x11, 0x21  # family << 4 | transport (STREAM)
_V1_PROTOCOLS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_V1_IPV4_OCTET = re.compile(r"[0-9]{1,3}")


class ProxyHeaderError(ProtocolError):
    """The bytes start like a PROXY header but are not a valid one; drop the connection.

    ``str(error)`` is a sentence that says what is wrong and quotes the offending input.
    """


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY protocol header.

    ``source`` and ``destination`` are ``None`` when the header carries no usable TCP address
    (v1 ``UNKNOWN``, v2 ``LOCAL``, ``AF_UNSPEC``, ``AF_UNIX``, UDP): the receiver then uses the
    real connection endpoints. ``tlvs`` and ``length`` are keyword-only.
    """

    version: int
    """1 or 2."""
    command: str
    """``"PROXY"``, or ``"LOCAL"`` for a v2 LOCAL command and for a v1 ``UNKNOWN`` line."""
    source: Address | None
    """The original client, e.g. ``("192.0.2.7", 56324)``."""
    destination: Address | None
    """The address the client connected to."""
    _: KW_ONLY
    tlvs: tuple[tuple[int, bytes], ...] = ()
    """Version 2 type-length-value extensions in wire order, values raw."""
    length: int
    """How many bytes the header occupied on the wire; strip exactly these."""

    @property
    def local(self) -> bool:
        """True for a v2 LOCAL command or a v1 ``UNKNOWN`` line (a health check or unknown peer)."""
        return self.command == "LOCAL"

    def tlv(self, tlv_type: int) -> bytes | None:
        """Return the value of the first TLV of ``tlv_type``, or ``None`` if there is none."""
        return next((value for t, value in self.tlvs if t == tlv_type), None)


def parse(
    data: bytes | bytearray | memoryview, *, max_v1: int = V1_MAX_LENGTH
) -> ProxyHeader | NeedData | None:
    """Recognise a PROXY v1 or v2 header at the start of ``data``.

    Args:
        data: every byte received so far on the connection, from its first byte.
        max_v1: the longest v1 line accepted, CRLF included.

    Returns:
        ``NEED_DATA`` if more bytes are needed, ``None`` if ``data`` does not start with a
        PROXY header, otherwise the :class:`ProxyHeader` (see the module docstring).

    Raises:
        ProxyHeaderError: ``data`` starts like a header but is malformed.
    """
    if not data:
        return NEED_DATA
    head = bytes(data[:12])
    if V2_SIGNATURE.startswith(head):
        return _parse_v2(data)
    if V1_SIGNATURE.startswith(head[:5]):
        return _parse_v1(data, max_v1)
    return None


def _show(raw: bytes | str, limit: int = 60) -> str:
    """Quote untrusted input for an error message, shortened."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def _parse_v1(data: bytes | bytearray | memoryview, max_v1: int) -> ProxyHeader | NeedData:
    window = bytes(data[:max_v1])
    end = window.find(b"\r\n")
    line = window if end < 0 else window[:end]
    # Check what we have before the CRLF arrives, so that garbage is refused at once.
    body = line[:-1] if end < 0 and line.endswith(b"\r") else line
    bad = next((b for b in body if not 0x20 <= b <= 0x7E), None)
    if bad in (0x0D, 0x0A):
        # Spec: "The receiver must not tolerate a single CR or LF character to end the line".
        raise ProxyHeaderError(f"PROXY v1 line has a bare CR or LF; it must end with CRLF: {_show(line)}")
    if bad is not None:
        raise ProxyHeaderError(f"PROXY v1 line contains the non-printable byte 0x{bad:02x}: {_show(line)}")
    if body[5:6] not in (b"", b" ") or (end >= 0 and len(body) < 6):
        raise ProxyHeaderError(f"PROXY v1 line must have exactly one space after 'PROXY': {_show(line)}")
    rest = body[6:]
    if not any(p.startswith(rest[: len(p)]) for p in _V1_PROTOCOLS):
        raise ProxyHeaderError(_v1_unknown_protocol(line))
    if end < 0:
        if len(window) >= max_v1:
            raise ProxyHeaderError(
                f"PROXY v1 line has no CRLF within the first {max_v1} bytes: {_show(line)}"
            )
        return NEED_DATA
    text = line.decode("ascii")
    fields = text.split(" ")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        # Spec: "For "UNKNOWN", the rest of the line before the CRLF may be omitted by the
        # sender, and the receiver must ignore anything presented before the CRLF is found."
        return ProxyHeader(1, "LOCAL", None, None, length=end + 2)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(_v1_unknown_protocol(line))
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"PROXY v1 line must be 'PROXY {protocol} <source> <destination> <source port> "
            f"<destination port>' with single spaces: {_show(text)}"
        )
    _, _, src, dst, sport, dport = fields
    return ProxyHeader(
        1,
        "PROXY",
        (_v1_address(src, protocol, "source"), _v1_port(sport, "source")),
        (_v1_address(dst, protocol, "destination"), _v1_port(dport, "destination")),
        length=end + 2,
    )


def _v1_unknown_protocol(line: bytes) -> str:
    return f"PROXY v1 line names an unknown protocol; expected TCP4, TCP6 or UNKNOWN: {_show(line)}"


def _v1_port(text: str, role: str) -> int:
    # Spec: "a decimal integer in the range [0..65535] inclusive. Heading zeroes are not
    # permitted in front of numbers in order to avoid any possible confusion with octal numbers."
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyHeaderError(
            f"PROXY v1 {role} port {text!r} is not a decimal number 0-65535 without leading zeros"
        )
    return int(text)


def _v1_address(text: str, protocol: str, role: str) -> str:
    if protocol == "TCP4":
        # Spec: "exactly 4 integers in the range [0..255] inclusive written in decimal
        # representation separated by exactly one dot [...] Heading zeroes are not permitted".
        octets = text.split(".")
        if len(octets) != 4 or not all(_V1_IPV4_OCTET.fullmatch(o) for o in octets):
            raise ProxyHeaderError(f"PROXY v1 {role} address {text!r} is not a dotted-quad IPv4 address")
        if any(len(o) > 1 and o[0] == "0" for o in octets):
            raise ProxyHeaderError(f"PROXY v1 {role} address {text!r} has an octet with a leading zero")
        if any(int(o) > 255 for o in octets):
            raise ProxyHeaderError(f"PROXY v1 {role} address {text!r} has an octet above 255")
        return text
    # Spec: "series of sets of 4 hexadecimal digits [...] with the acceptance of one double
    # colon". inet_pton also takes a trailing dotted quad ("::ffff:1.2.3.4"), as HAProxy does.
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 {role} address {text!r} is not an IPv6 address") from None


def _parse_v2(data: bytes | bytearray | memoryview) -> ProxyHeader | NeedData:
    if len(data) < _V2_HEADER_LENGTH:
        _check_v2_fixed(bytes(data))
        return NEED_DATA
    fixed = bytes(data[:_V2_HEADER_LENGTH])
    command, family = _check_v2_fixed(fixed)
    (block_length,) = struct.unpack_from("!H", fixed, 14)
    address_length = _V2_ADDRESS_LENGTH[family >> 4]
    if command == _V2_PROXY and block_length < address_length:
        raise ProxyHeaderError(
            f"PROXY v2 header declares {block_length} address bytes, too few for family/protocol "
            f"0x{family:02x} which needs {address_length}"
        )
    total = _V2_HEADER_LENGTH + block_length
    if len(data) < total:
        return NEED_DATA
    header = bytes(data[:total])
    source = destination = None
    if command == _V2_PROXY and family in (_V2_TCP4, _V2_TCP6):
        size = 4 if family == _V2_TCP4 else 16
        kind = socket.AF_INET if family == _V2_TCP4 else socket.AF_INET6
        addresses = header[16 : 16 + 2 * size]
        sport, dport = struct.unpack_from("!HH", header, 16 + 2 * size)
        source = (socket.inet_ntop(kind, addresses[:size]), sport)
        destination = (socket.inet_ntop(kind, addresses[size:]), dport)
    # Spec on LOCAL: "discard the protocol block including the family which is ignored", so a
    # LOCAL block shorter than its family's addresses is accepted and simply has no TLVs.
    tlvs = _parse_tlvs(header, _V2_HEADER_LENGTH + min(address_length, block_length))
    return ProxyHeader(
        2,
        "PROXY" if command == _V2_PROXY else "LOCAL",
        source,
        destination,
        tlvs=tlvs,
        length=total,
    )


def _check_v2_fixed(fixed: bytes) -> tuple[int, int]:
    """Validate bytes 13 and 14 of a v2 header as far as they have arrived."""
    version_command = fixed[12] if len(fixed) > 12 else 0x20
    # Spec: the version "must always be sent as \\x2 and the receiver must only accept this
    # value"; for commands other than LOCAL/PROXY "Receivers must drop connections".
    if version_command >> 4 != 2:
        raise ProxyHeaderError(
            f"PROXY v2 header has version {version_command >> 4} (byte 13 is 0x{version_command:02x}); "
            "only version 2 exists"
        )
    if version_command & 0x0F not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(
            f"PROXY v2 header has unknown command {version_command & 0x0F}; expected 0 (LOCAL) or 1 (PROXY)"
        )
    family = fixed[13] if len(fixed) > 13 else 0x00
    # Spec: other families and protocols "must be rejected as invalid by receivers".
    if family >> 4 not in _V2_ADDRESS_LENGTH or family & 0x0F > 2:
        raise ProxyHeaderError(
            f"PROXY v2 header has unknown address family/protocol byte 0x{family:02x}; "
            "expected families UNSPEC, INET, INET6 or UNIX over UNSPEC, STREAM or DGRAM"
        )
    return version_command & 0x0F, family


def _parse_tlvs(header: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    crc_at: list[int] = []
    while offset < len(header):
        if len(header) - offset < 3:
            raise ProxyHeaderError(
                f"PROXY v2 header ends with {len(header) - offset} stray bytes where a TLV "
                "(at least 3 bytes) was expected"
            )
        tlv_type, value_length = header[offset], int.from_bytes(header[offset + 1 : offset + 3])
        start, offset = offset + 3, offset + 3 + value_length
        if offset > len(header):
            raise ProxyHeaderError(
                f"PROXY v2 TLV type 0x{tlv_type:02x} declares {value_length} bytes but only "
                f"{len(header) - start} remain in the header"
            )
        if tlv_type == PP2_TYPE_CRC32C:
            if value_length != 4:
                raise ProxyHeaderError(f"PROXY v2 CRC32C TLV has {value_length} bytes; it must have 4")
            crc_at.append(start)
        tlvs.append((tlv_type, header[start:offset]))
    if len(crc_at) > 1:
        raise ProxyHeaderError("PROXY v2 header has more than one CRC32C TLV")
    if crc_at:
        # Spec: "replace the 32 bits of the checksum field in the received PROXY header with all
        # '0's and calculate a CRC32c checksum value of the whole PROXY header". Byte order is
        # network order, as HAProxy sends it.
        at = crc_at[0]
        expected = int.from_bytes(header[at : at + 4])
        actual = crc32c(header[:at] + bytes(4) + header[at + 4 :])
        if actual != expected:
            raise ProxyHeaderError(
                f"PROXY v2 header fails its CRC32C check (sent 0x{expected:08x}, computed "
                f"0x{actual:08x}); it was corrupted in transit or built wrongly"
            )
    return tuple(tlvs)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """Return the CRC32c (Castagnoli, RFC 4960 appendix B) of ``data``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoints(source: Address | None, destination: Address | None) -> tuple[_IP, int, _IP, int] | None:
    """Validate both ends; turn IPv4-mapped IPv6 into IPv4 when both ends are IPv4 underneath."""
    if source is None or destination is None:
        return None
    ends: list[_IP] = []
    for role, (host, port) in (("source", source), ("destination", destination)):
        if not 0 <= port <= 65535:
            raise ValueError(f"{role} port {port} is outside 0-65535")
        # A link-local peer comes as "fe80::1%eth0"; the wire has no room for the zone.
        ends.append(ipaddress.ip_address(host.partition("%")[0]))
    unmapped = [ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip for ip in ends]
    if all(isinstance(ip, ipaddress.IPv4Address) for ip in unmapped):
        ends = unmapped
    return ends[0], source[1], ends[1], destination[1]


def _text(ip: _IP) -> str:
    """Format an address as the socket module would (``::ffff:1.2.3.4``, not ``::ffff:102:304``)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return socket.inet_ntop(socket.AF_INET6, ip.packed)


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """Return a PROXY v1 line for a TCP connection from ``source`` to ``destination``.

    If either end is ``None``, or one end is IPv4 and the other real IPv6, the line is the
    short ``b"PROXY UNKNOWN\\r\\n"``.

    Raises:
        ValueError: an address is not an IP address or a port is outside 0-65535.
    """
    ends = _endpoints(source, destination)
    if ends is None or type(ends[0]) is not type(ends[2]):
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = ends
    return f"PROXY TCP{src.version} {_text(src)} {_text(dst)} {sport} {dport}\r\n".encode("ascii")


def build_v2(
    source: Address | None, destination: Address | None, *, tlvs: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """Return a PROXY v2 header for a TCP connection from ``source`` to ``destination``.

    If either end is ``None`` the command is LOCAL with family AF_UNSPEC. If one end is IPv4
    and the other real IPv6, the IPv4 end is sent IPv4-mapped over AF_INET6. ``tlvs`` are
    appended in order; the value given for a ``PP2_TYPE_CRC32C`` TLV is ignored and replaced
    by the checksum of the finished header.

    Raises:
        ValueError: bad address or port, a TLV type outside 0-255, more than one CRC32C TLV,
            or a header longer than 65535 + 16 bytes.
    """
    ends = _endpoints(source, destination)
    if ends is None:
        version_command, family, addresses = 0x20 | _V2_LOCAL, 0x00, b""
    else:
        src, sport, dst, dport = ends
        if type(src) is not type(dst):
            src, dst = (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip for ip in (src, dst))
        version_command = 0x20 | _V2_PROXY
        family = _V2_TCP4 if src.version == 4 else _V2_TCP6
        addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    body = bytearray(addresses)
    crc_at: list[int] = []
    for tlv_type, value in tlvs:
        if not 0 <= tlv_type <= 255:
            raise ValueError(f"TLV type {tlv_type} is outside 0-255")
        if tlv_type == PP2_TYPE_CRC32C:
            value = bytes(4)
            crc_at.append(_V2_HEADER_LENGTH + len(body) + 3)
        if len(value) > 65535:
            raise ValueError(f"TLV type 0x{tlv_type:02x} value has {len(value)} bytes; the limit is 65535")
        body += struct.pack("!BH", tlv_type, len(value)) + value
    if len(body) > 65535:
        raise ValueError(f"PROXY v2 header body would be {len(body)} bytes; the limit is 65535")
    if len(crc_at) > 1:
        raise ValueError("a PROXY v2 header can carry only one CRC32C TLV")
    header = bytearray(V2_SIGNATURE + struct.pack("!BBH", version_command, family, len(body)) + body)
    for at in crc_at:
        header[at : at + 4] = crc32c(bytes(header)).to_bytes(4)
    return bytes(header)
