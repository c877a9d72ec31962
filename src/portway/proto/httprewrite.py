"""What a forward proxy changes in HTTP/1.1 heads, and how it reads a request target: pure.

- :func:`request_head`: the head for the origin (origin-form target, ``Host`` from the URL,
  hop-by-hop fields removed, ``Via`` and optionally ``X-Forwarded-For`` appended).
- :func:`response_head`: the head for the client (hop-by-hop fields removed, the framing the
  proxy chose, ``Via``, and the ``Connection`` it means).
- :func:`absolute_target` and :func:`split_authority`: where a request goes.

Hop-by-hop fields (RFC 9110 §7.6.1) are ``Connection`` and every field it names,
``Keep-Alive``, ``Proxy-Authorization`` (requests), ``Proxy-Connection``, ``TE``,
``Trailer`` and ``Upgrade`` (kept, with ``Connection: Upgrade``, for a real upgrade).
``Transfer-Encoding`` is the proxy's to decide, since it re-frames bodies.
"""

from __future__ import annotations

import re

import httptools

from portway.proto.http1 import Head

__all__ = ["Target", "absolute_target", "request_head", "response_head", "split_authority"]

#: Request fields that never go to the origin (RFC 9110 §7.6.1, and the proxy's own).
_REQUEST_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
        b"via",
        b"x-forwarded-for",
    }
)
#: Fields a ``Connection`` header may name but that are never dropped for it: removing the
#: framing of a body the proxy passes on would let its bytes be read as the next message.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
#: Response fields that never go to the client (``transfer-encoding`` is decided per answer).
_RESPONSE_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"via",
        b"transfer-encoding",
    }
)


def request_head(
    head: Head, path: bytes, authority: bytes, *, client_ip: str | None, upgrade: bytes | None
) -> bytes:
    """The head sent to the origin: origin-form target, ``Host`` from the URL, hop-by-hop
    fields removed, ``Via`` (and ``X-Forwarded-For`` when ``client_ip`` is given) appended."""
    drop = _REQUEST_HOP | (head.connection - _FRAMING) if head.connection else _REQUEST_HOP
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (head.method.encode(), path, authority)]
    via: list[bytes] = []
    xff: list[bytes] = []
    for name, value in head.fields:
        low = name.lower()
        if low in drop:
            if low == b"via":
                via.append(value)
            elif low == b"x-forwarded-for":
                xff.append(value)
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if upgrade is not None:
        out.append(b"Upgrade: %s\r\nConnection: Upgrade\r\n" % upgrade)
    via.append(b"%s portway" % head.version.encode())
    out.append(b"Via: %s\r\n" % b", ".join(via))
    if client_ip is not None:
        xff.append(client_ip.encode())
    if xff:
        out.append(b"X-Forwarded-For: %s\r\n" % b", ".join(xff))
    out.append(b"\r\n")
    return b"".join(out)


def response_head(head: Head, *, te: bytes | None, close: bool, keep_alive_10: bool, upgrade: bool) -> bytes:
    """The head sent to the client: hop-by-hop fields removed, ``Transfer-Encoding: te``
    when the proxy chunks the body, ``Via`` appended, and the ``Connection`` it means."""
    drop = _RESPONSE_HOP | (head.connection - _FRAMING) if head.connection else _RESPONSE_HOP
    out = [b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason)]
    via: list[bytes] = []
    for name, value in head.fields:
        low = name.lower()
        if low in drop:
            if low == b"via":
                via.append(value)
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if te is not None:
        out.append(b"Transfer-Encoding: %s\r\n" % te)
    via.append(b"%s portway" % head.version.encode())
    out.append(b"Via: %s\r\n" % b", ".join(via))
    if upgrade:
        out.append(b"Upgrade: %s\r\nConnection: Upgrade\r\n" % (head.get(b"upgrade") or b""))
    elif close:
        out.append(b"Connection: close\r\n")
    elif keep_alive_10:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def split_authority(authority: bytes, default_port: int) -> tuple[str, int] | None:
    """``(host, port)`` of ``host[:port]`` or ``[v6]:port``; None when malformed."""
    text = authority.decode("latin-1")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or _BAD_HOST.search(host) or (":" in host and not text.startswith("[")):
        return None
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


_BAD_HOST = re.compile(r"[ /?#@\\\[\]]")


class Target:
    """Where one request goes: the origin and the origin-form path."""

    __slots__ = ("authority", "host", "path", "port", "tls", "url")

    def __init__(self, host: str, port: int, authority: bytes, path: bytes, url: str, tls: bool) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        self.path = path
        self.url = url
        self.tls = tls


def absolute_target(target: bytes) -> Target | str:
    """The :class:`Target` of an ``http://`` absolute-form request target, or why not."""
    if target.startswith(b"/"):
        return "this is a forward proxy: send an absolute URI (GET http://host/path) or CONNECT"
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return "malformed request target"
    scheme = (url.schema or b"").lower()
    if scheme == b"https":
        return "https:// URLs go through CONNECT"
    if scheme != b"http" or not url.host:
        return "this is a forward proxy: send an absolute URI (GET http://host/path) or CONNECT"
    if url.userinfo:
        return "credentials in the URL are not forwarded"
    if url.port == 0:
        return "port 0 in the request target"
    host = url.host.decode("latin-1")
    port = url.port or 80
    path = url.path or b"/"
    if url.query:
        path += b"?" + url.query
    authority = b"[" + url.host + b"]" if b":" in url.host else url.host
    if url.port is not None:
        authority += b":%d" % url.port
    return Target(host, port, authority, path, target.decode("latin-1"), tls=False)
