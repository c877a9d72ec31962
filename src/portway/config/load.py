"""Load a TOML configuration into a validated, resolved :class:`~portway.config.model.Config`.

Strategy
    Rule 1: validate the whole document and report every problem, never just the
    first. Problems are collected as :class:`~portway.errors.ConfigIssue` and raised
    together in one :class:`~portway.errors.ConfigError`.

    Rule 2: every message names the file and the key, says what was expected and
    quotes what was found. Pydantic's own wording and URLs never reach the user:
    :func:`_translate` rewrites each pydantic error into a sentence.

    Rule 3: one broken entry must not hide the others. The top level is validated
    once; each ``[[listener]]`` (against the class of its ``mode``) and each
    ``[[backend]]`` is validated on its own. Cross-checks (unique names, backend
    references, bind clashes) then run on what did validate, and use the names as
    written so that a backend with a bad server does not also produce "no backend
    named ...".

    Rule 4: only a document without any issue is resolved: ``[defaults]`` are
    inherited, relative paths are made absolute against the config file's
    directory, ``workers = "auto"`` is counted.

Key paths count array indexes from 0 and use names where the document gives a
valid, unique one: ``listener.db.bind[1]``, ``backend.web.servers[0].address``; an
entry without a usable name is ``listener[2]``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shlex
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from portway.config.keys import KeyProblem, load_gateway_keys
from portway.config.model import (
    LISTENER_MODES,
    NAME_PATTERN,
    PLANNED_MODES,
    AdminDoc,
    AdminSpec,
    BackendDoc,
    BackendSpec,
    BackendTlsDoc,
    BindSpec,
    CertFile,
    CertFileDoc,
    Config,
    DefaultsDoc,
    DocumentDoc,
    Eject,
    FrozenMap,
    HealthCheck,
    Keepalive,
    KeepaliveDoc,
    KeyedValueError,
    ListenerDoc,
    ListenerSpec,
    LogDoc,
    LogSpec,
    ProxyProtocolIn,
    RouteDoc,
    ServerDoc,
    ServerSpec,
    TcpListenerDoc,
    TlsListenerDoc,
    parse_bind,
    quote,
    suggest,
)
from portway.config.units import format_hostport
from portway.errors import ConfigError, ConfigIssue
from portway.net import mitmca, tlsctx
from portway.route.auth import Credentials

__all__ = ["load_dict", "load_file", "load_text"]

Loc = tuple[str | int, ...]
_T = TypeVar("_T")

_ARRAYS = ("listener", "backend")
"""Top-level arrays of tables whose entries are named in key paths."""

_DEFAULT_ADMIN = "127.0.0.1:9090"

_SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("the top level", DocumentDoc),
    ("[admin]", AdminDoc),
    ("[log]", LogDoc),
    ("[defaults]", DefaultsDoc),
    ("[[listener]]", TcpListenerDoc),
    ('a [[listener]] of mode "sni" or "tls"', TlsListenerDoc),
    ("[[listener.route]]", RouteDoc),
    ('a listener\'s certificates = [{ cert = "...", key = "..." }]', CertFileDoc),
    ("[[backend]]", BackendDoc),
    ("a backend's servers", ServerDoc),
    ("a backend's tls = { ... }", BackendTlsDoc),
)
"""Where keys live, to answer "unknown key" with where it belongs."""


def load_file(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve the TOML configuration file at ``path``.

    Relative paths inside the file are relative to the file's directory. Error
    messages name the file as ``path`` was given.

    Raises:
        ConfigError: The file cannot be read or is not UTF-8, or the document has
            problems (all of them are listed).
    """
    source = os.fspath(path)
    where = os.path.abspath(source)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise _fail(source, f"cannot read the configuration file: there is no file at {where}") from None
    except IsADirectoryError:
        raise _fail(source, f"cannot read the configuration file: {where} is a directory") from None
    except PermissionError:
        raise _fail(source, f"cannot read the configuration file: permission denied on {where}") from None
    except OSError as exc:
        raise _fail(source, f"cannot read the configuration file {where}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _fail(source, f"the file is not UTF-8 text (invalid byte at line {line})") from None
    return load_text(text, source)


def load_text(text: str, source: str) -> Config:
    """Parse TOML ``text`` and validate and resolve it.

    Args:
        text: The TOML document.
        source: The file name used in messages; relative paths in the document are
            resolved against its directory (against the working directory when
            ``source`` looks like ``"<built-in default>"``).

    Raises:
        ConfigError: A TOML syntax error (with its line and column), or every
            problem in the document.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(source, "", _syntax_message(str(exc), text))]) from None
    return load_dict(data, source)


def load_dict(data: dict[str, Any], source: str) -> Config:
    """Validate and resolve an already parsed document (``Config.raw``, or JSON).

    ``data`` is copied; the copy becomes :attr:`Config.raw`. Arguments as in
    :func:`load_text`.

    Raises:
        ConfigError: Every problem in the document.
    """
    if not isinstance(data, dict):
        raise _fail(source, f"expected a table at the top level, got {quote(data)}")
    raw = copy.deepcopy(data)
    return _Loader(raw, source).load()


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError([ConfigIssue(source, "", message)])


_AT_LINE = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$", re.DOTALL)
_AT_END = re.compile(r"^(?P<what>.*) \(at end of document\)$", re.DOTALL)


def _syntax_message(message: str, text: str) -> str:
    """Rewrite a tomllib message: where first, then what, then the line itself."""
    what = message
    line: int | None = None
    column: int | None = None
    if match := _AT_LINE.match(message):
        what, line, column = match["what"], int(match["line"]), int(match["column"])
    elif match := _AT_END.match(message):
        what = match["what"]
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
    what = what[:1].lower() + what[1:]
    if line is None:
        return f"invalid TOML: {what}"
    where = f"line {line}, column {column}" if column is not None else f"the end of the file (line {line})"
    lines = text.splitlines()
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    suffix = f" (the line reads: {shown})" if shown else ""
    return f"invalid TOML at {where}: {what}{suffix}"


class _Loader:
    """One load: the raw document and the issues found so far."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source
        self.issues: list[tuple[tuple[int, int], ConfigIssue]] = []

    # -- reporting ---------------------------------------------------------

    def report(self, loc: Loc, message: str, *, key: str | None = None) -> None:
        """Record an issue at ``loc`` (or at the literal ``key`` path)."""
        path = _key_path(self.raw, loc) if key is None else key
        self.issues.append((_order(loc), ConfigIssue(self.source, path, message)))

    def report_pydantic(self, error: ValidationError, model: type[BaseModel], prefix: Loc) -> None:
        """Record each of pydantic's errors, translated; ``prefix`` locates ``model``."""
        for detail in error.errors(include_url=False):
            loc, message = _translate(detail, model)
            self.report(prefix + loc, message)

    # -- the whole load ----------------------------------------------------

    def load(self) -> Config:
        """Validate everything, cross-check, then resolve or raise."""
        document: DocumentDoc | None = None
        try:
            document = DocumentDoc.model_validate(self.raw)
        except ValidationError as exc:
            self.report_pydantic(exc, DocumentDoc, ())

        listeners = self._listeners()
        backends = self._backends()
        if document is not None and not self.raw.get("listener"):
            self.report(("listener",), "expected at least one [[listener]], found none")
        self._check_names("listener")
        self._check_names("backend")
        self._check_backend_refs()
        self._check_binds()
        self._check_tls_files(listeners, backends)
        self._check_gateway_keys(listeners)
        self._check_users_files(listeners)
        self._check_interception(listeners)

        if self.issues or document is None:
            ordered = sorted(self.issues, key=lambda pair: pair[0])
            raise ConfigError(issue for _, issue in ordered)
        return self._resolve(document, listeners, backends)

    def _entries(self, array: str) -> list[tuple[int, dict[str, Any]]]:
        value = self.raw.get(array)
        if not isinstance(value, list):
            return []
        return [(index, item) for index, item in enumerate(value) if isinstance(item, dict)]

    def _listeners(self) -> list[tuple[int, ListenerDoc]]:
        valid: list[tuple[int, ListenerDoc]] = []
        for index, item in self._entries("listener"):
            model = self._listener_model(index, item)
            if model is None:
                continue
            try:
                valid.append((index, model.model_validate(item)))
            except ValidationError as exc:
                self.report_pydantic(exc, model, ("listener", index))
        return valid

    def _listener_model(self, index: int, item: dict[str, Any]) -> type[ListenerDoc] | None:
        available = ", ".join(LISTENER_MODES)
        if "mode" not in item:
            self.report(("listener", index), f'missing required key "mode" (available: {available})')
            return None
        mode = item["mode"]
        model = LISTENER_MODES.get(mode) if isinstance(mode, str) else None
        if model is not None:
            return model
        loc: Loc = ("listener", index, "mode")
        if mode in PLANNED_MODES:
            self.report(
                loc,
                f"mode {quote(mode)} is not available in this version of Portway (available: {available})",
            )
        else:
            listed = ", ".join(f'"{name}"' for name in LISTENER_MODES)
            hint = suggest(mode, [*LISTENER_MODES, *PLANNED_MODES]) if isinstance(mode, str) else ""
            self.report(loc, f"expected one of {listed}, got {quote(mode)}{hint}")
        return None

    def _backends(self) -> list[tuple[int, BackendDoc]]:
        valid: list[tuple[int, BackendDoc]] = []
        for index, item in self._entries("backend"):
            try:
                valid.append((index, BackendDoc.model_validate(item)))
            except ValidationError as exc:
                self.report_pydantic(exc, BackendDoc, ("backend", index))
        return valid

    # -- cross-checks --------------------------------------------------------

    def _check_names(self, array: str) -> None:
        seen: dict[str, int] = {}
        for index, item in self._entries(array):
            name = item.get("name")
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                continue  # reported by validation
            if name in seen:
                self.report(
                    (array, index, "name"),
                    f"{array} name {quote(name)} is already used by {array}[{seen[name]}];"
                    " names must be unique",
                    key=f"{array}[{index}].name",
                )
            else:
                seen[name] = index

    def _backend_names(self) -> list[str]:
        names = (item.get("name") for _, item in self._entries("backend"))
        return [name for name in names if isinstance(name, str) and NAME_PATTERN.fullmatch(name)]

    def _check_backend_refs(self) -> None:
        names = self._backend_names()
        for index, item in self._entries("listener"):
            mode = item.get("mode")
            model = LISTENER_MODES.get(mode) if isinstance(mode, str) else None
            if model is None:
                continue
            for loc, name in model.backend_refs(item):
                if name in names:
                    continue
                if not names:
                    hint = " (no [[backend]] is defined)"
                else:
                    hint = suggest(name, names) or " (defined: " + ", ".join(names) + ")"
                self.report(("listener", index, *loc), f"no backend named {quote(name)}{hint}")

    def _check_binds(self) -> None:
        """No address may be bound twice (port 0 aside): not by two listeners, not
        twice by one, not by a listener and the admin endpoint.

        Reads the raw document, so a listener with other problems still counts.
        """
        owners: dict[tuple[str, int], str] = {}
        admin = self.raw.get("admin")
        listen = admin.get("listen", _DEFAULT_ADMIN) if isinstance(admin, dict) else _DEFAULT_ADMIN
        with contextlib.suppress(ValueError):
            if listen != "off":
                owners[parse_bind(listen)] = "[admin] listen"
        for index, item in self._entries("listener"):
            binds = item.get("bind")
            single = isinstance(binds, str)
            if not isinstance(binds, list):
                binds = [binds]
            name = item.get("name")
            who = f"listener {quote(name)}" if isinstance(name, str) else f"listener[{index}]"
            for position, value in enumerate(binds):
                try:
                    address = parse_bind(value)
                except ValueError:
                    continue  # reported by validation
                if address[1] == 0:
                    continue  # ephemeral: every bind gets its own port
                if address in owners:
                    shown = format_hostport(*address)
                    self.report(
                        ("listener", index, "bind", position),
                        f"{shown} is already bound by {owners[address]}",
                    )
                else:
                    owners[address] = who if single else f"{who} (bind[{position}])"

    def _check_tls_files(
        self, listeners: list[tuple[int, ListenerDoc]], backends: list[tuple[int, BackendDoc]]
    ) -> None:
        """Load every certificate a listener serves and every CA file a backend trusts, as the
        workers will, so that ``portway check`` and a reload find a bad file before it is used.

        Runs on the entries that validated; a file named twice is read once.
        """
        seen: dict[tuple[CertFile, str], str | None] = {}
        for index, doc in listeners:
            spec = doc.tls_spec(self._path)
            if spec is None:
                continue
            for position, entry in enumerate(spec.certificates):
                if (entry, spec.min_version) not in seen:
                    seen[(entry, spec.min_version)] = _cert_problem(entry, spec.min_version)
                problem = seen[(entry, spec.min_version)]
                if problem is not None:
                    self.report(("listener", index, "certificates", position), problem)
        for index, backend in backends:
            if backend.tls is None or backend.tls.ca is None:
                continue
            try:
                tlsctx.client_context(self._path(backend.tls.ca), verify=True)
            except tlsctx.CertError as exc:
                self.report(("backend", index, "tls", "ca"), _with_fix(exc))

    def _check_users_files(self, listeners: list[tuple[int, ListenerDoc]]) -> None:
        """Read every forward proxy's users file as the workers will."""
        for index, doc in listeners:
            spec = doc.http_proxy_spec(self._path, DefaultsDoc())
            if spec is None or spec.users_file is None:
                continue
            try:
                Credentials.load(spec.users_file)
            except (OSError, ValueError) as exc:
                self.report(("listener", index, "users_file"), str(exc))

    def _check_interception(self, listeners: list[tuple[int, ListenerDoc]]) -> None:
        """Load the CA, the origin CA file and check the HAR file's directory of every forward
        proxy that intercepts, as the workers will; a CA named twice is read once."""
        cas: dict[str, str | None] = {}
        for index, doc in listeners:
            proxy = doc.http_proxy_spec(self._path, DefaultsDoc())
            spec = proxy.intercept if proxy is not None else None
            if spec is None:
                continue
            if spec.ca not in cas:
                cas[spec.ca] = _ca_problem(spec.ca)
            problem = cas[spec.ca]
            if problem is not None:
                self.report(("listener", index, "intercept_ca"), problem)
            if spec.origin_ca is not None:
                try:
                    tlsctx.client_context(spec.origin_ca, verify=True)
                except tlsctx.CertError as exc:
                    self.report(("listener", index, "intercept_origin_ca"), _with_fix(exc))
            if spec.har is not None:
                problem = _har_problem(spec.har)
                if problem is not None:
                    self.report(("listener", index, "har"), problem)

    def _check_gateway_keys(self, listeners: list[tuple[int, ListenerDoc]]) -> None:
        """Read every gateway's keys as the workers will (files and environment variables)."""
        for index, doc in listeners:
            spec = doc.gateway_spec(self._path, DefaultsDoc())
            if spec is None:
                continue
            try:
                load_gateway_keys(spec)
            except KeyProblem as exc:
                self.report(("listener", index, exc.key), str(exc))

    # -- resolution ----------------------------------------------------------

    def _base_dir(self) -> str:
        if self.source.startswith("<") and self.source.endswith(">"):
            return os.getcwd()
        return os.path.dirname(os.path.abspath(self.source))

    def _path(self, value: str) -> str:
        return os.path.normpath(os.path.join(self._base_dir(), os.path.expanduser(value)))

    def _resolve(
        self,
        document: DocumentDoc,
        listeners: list[tuple[int, ListenerDoc]],
        backends: list[tuple[int, BackendDoc]],
    ) -> Config:
        defaults = document.defaults
        if isinstance(document.workers, int):
            workers, auto = document.workers, False
        else:
            workers, auto = _cpu_count(), True
        access = document.log.access
        if access not in ("stdout", "stderr", "off"):
            access = self._path(access)
        listen = document.admin.listen
        return Config(
            source=self.source,
            workers=workers,
            workers_auto=auto,
            pid_file=self._path(document.pid_file) if document.pid_file is not None else None,
            drain_timeout=document.drain_timeout,
            admin=AdminSpec(listen=BindSpec(*listen) if listen is not None else None),
            log=LogSpec(access=access, format=document.log.format, level=document.log.level),
            listeners=tuple(_resolve_listener(doc, defaults, self._path) for _, doc in listeners),
            backends=FrozenMap(
                {doc.name: _resolve_backend(doc, defaults, self._path) for _, doc in backends}
            ),
            raw=self.raw,
        )


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _keepalive(doc: KeepaliveDoc) -> Keepalive | None:
    if doc.off:
        return None
    return Keepalive(idle=doc.idle, interval=doc.interval, count=doc.count)


_FIXES: dict[str, str] = {
    "missing": "a relative path is taken from the configuration file's directory",
    "no_key": (
        'append the private key to this file, or name a separate key file with { cert = "site.crt", '
        'key = "site.key" }'
    ),
    "mismatch": "name the key that was made with this certificate (the chain must start with its leaf)",
    "expired": "renew the certificate",
    "not_yet_valid": "check this machine's clock, or wait until then",
}
"""What to do, by :attr:`portway.net.tlsctx.CertError.kind`, where the error itself does not say."""


def _with_fix(exc: tlsctx.CertError) -> str:
    """The error's sentence, with what to do about it where that helps."""
    fix = _FIXES.get(exc.kind)
    return f"{exc}; {fix}" if fix else str(exc)


def _cert_problem(entry: CertFile, min_version: str) -> str | None:
    """Why ``entry`` cannot be served, or ``None`` when it loads."""
    try:
        tlsctx.load(entry.cert, entry.key, min_version=min_version)
    except tlsctx.CertError as exc:
        return _with_fix(exc)
    return None


def _ca_problem(directory: str) -> str | None:
    """Why the interception CA in ``directory`` cannot be used, with what to do; ``None`` when
    it loads."""
    try:
        mitmca.CertificateAuthority.load(directory)
    except mitmca.CAError as exc:
        return _ca_message(exc, directory)
    return None


def _ca_message(exc: mitmca.CAError, directory: str) -> str:
    """The sentence for a CA that does not load: what is wrong, then what to do."""
    init = f"portway ca init --dir {shlex.quote(directory)}"
    if exc.kind == "missing" and exc.path.endswith(mitmca.CA_CERT_FILE):
        why = "is not a directory" if os.path.exists(directory) else "does not exist"
        where = (
            f"{directory} {why}"
            if not os.path.isdir(directory)
            else f"{directory} holds no {mitmca.CA_CERT_FILE}"
        )
        return (
            f"intercepting needs a CA, and there is none: {where}; make one with `{init}` and have the "
            f"clients trust its {mitmca.CA_CERT_FILE} (`portway ca show --dir {shlex.quote(directory)}`), "
            "or point intercept_ca at an existing CA directory"
        )
    if exc.kind == "missing":
        return (
            f"{exc.path}: no such file (the CA's private key; {mitmca.CA_CERT_FILE} alone cannot sign): "
            f"put the key back, or make a new CA with `{init} --force` (clients must then trust the new "
            "certificate)"
        )
    if exc.kind in ("not_pem", "not_ca", "mismatch", "invalid"):
        return (
            f"{exc}; point intercept_ca at a directory made by `portway ca init`, or make a new CA there "
            f"with `{init} --force` (clients must then trust the new certificate)"
        )
    if exc.kind == "unreadable":
        return f"{exc}; run Portway as a user who can read the CA directory, or fix its permissions"
    return str(exc)  # insecure_key, encrypted_key, expired, not_yet_valid: the message says what to do


def _har_problem(path: str) -> str | None:
    """Why the HAR file ``path`` could not be written, or ``None``: its directory must exist and be
    writable (the file is written whole under a temporary name there and renamed into place, once
    per worker), and ``path`` must not be a directory."""
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return f"{path} is a directory; name a file in it, like {os.path.join(path, 'intercepted.har')}"
    if not os.path.isdir(directory):
        why = "is not a directory" if os.path.exists(directory) else "does not exist"
        return (
            f"cannot write the HAR file {path}: its directory {directory} {why}; create it or pick "
            "another path"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"cannot write the HAR file {path}: the directory {directory} is not writable by this user; "
            "fix its permissions or pick another path"
        )
    return None


def _resolve_listener(doc: ListenerDoc, defaults: DefaultsDoc, path: Callable[[str], str]) -> ListenerSpec:
    return ListenerSpec(
        name=doc.name,
        mode=doc.mode,
        bind=tuple(BindSpec(host, port) for host, port in doc.bind),
        backend=doc.default_backend(),
        max_connections=_pick(doc.max_connections, defaults.max_connections),
        sniff_timeout=_pick(doc.handshake_deadline(), _pick(doc.sniff_timeout, defaults.sniff_timeout)),
        idle_timeout=_pick(doc.idle_timeout, defaults.idle_timeout),
        keepalive=_keepalive(_pick(doc.keepalive, defaults.keepalive)),
        relay=_pick(doc.relay, defaults.relay),
        backlog=_pick(doc.backlog, defaults.backlog),
        proxy_protocol=ProxyProtocolIn(
            accept=doc.proxy_protocol.accept, trusted=tuple(doc.proxy_protocol.trusted)
        ),
        routes=doc.route_specs(),
        tls=doc.tls_spec(path),
        gateway=doc.gateway_spec(path, defaults),
        http_proxy=doc.http_proxy_spec(path, defaults),
    )


def _resolve_backend(doc: BackendDoc, defaults: DefaultsDoc, path: Callable[[str], str]) -> BackendSpec:
    check = doc.health_check
    return BackendSpec(
        name=doc.name,
        balance=doc.balance,
        servers=tuple(
            ServerSpec(
                name=server.display_name,
                host=server.address[0],
                port=server.address[1],
                weight=server.weight,
                backup=server.backup,
            )
            for server in doc.servers
        ),
        connect_timeout=_pick(doc.connect_timeout, defaults.connect_timeout),
        retries=_pick(doc.retries, defaults.retries),
        health_check=(
            HealthCheck(interval=check.interval, timeout=check.timeout, rise=check.rise, fall=check.fall)
            if check is not None
            else None
        ),
        eject=Eject(failures=doc.eject.failures, cooldown=doc.eject.cooldown),
        send_proxy_protocol=doc.send_proxy_protocol,
        tls=doc.tls.spec(path) if doc.tls is not None else None,
    )


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


# ---------------------------------------------------------------------------
# Key paths and messages.
# ---------------------------------------------------------------------------


def _order(loc: Loc) -> tuple[int, int]:
    """Sort issues as the document reads: top level, then listeners, then backends."""
    if loc and loc[0] in _ARRAYS:
        index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1
        return (1 + _ARRAYS.index(str(loc[0])), index)
    return (0, 0)


def _key_path(raw: Any, loc: Loc) -> str:
    """Render ``loc`` as a key path, naming array entries where the document can.

    An integer step into a value that is not a list is dropped: ``bind = "x:1"``
    is validated as a one-item list, and its error belongs to ``bind`` itself.
    """
    path = ""
    node = raw
    for depth, part in enumerate(loc):
        if isinstance(part, int):
            if not isinstance(node, list):
                continue
            item = node[part] if 0 <= part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            named = (
                depth == 1
                and loc[0] in _ARRAYS
                and isinstance(name, str)
                and NAME_PATTERN.fullmatch(name) is not None
                and sum(1 for other in node if isinstance(other, dict) and other.get("name") == name) == 1
            )
            path += f".{name}" if named else f"[{part}]"
            node = item
        else:
            path = f"{path}.{part}" if path else part
            node = node.get(part) if isinstance(node, dict) else None
    return path


def _members(annotation: Any) -> list[Any]:
    """Flatten ``Annotated`` and unions into the plain types they allow."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _members(arg)]
    return [annotation]


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The document class that validates the table at ``loc`` below ``model``."""
    annotation: Any = model
    for part in loc:
        members = _members(annotation)
        if isinstance(part, str):
            found = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if not found or part not in found[0].model_fields:
                return None
            annotation = found[0].model_fields[part].annotation
        else:
            lists = [m for m in members if typing.get_origin(m) in (list, tuple)]
            if not lists:
                return None
            annotation = typing.get_args(lists[0])[0]
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _may_live_in(key: str, other: type[BaseModel], model: type[BaseModel]) -> bool:
    """Whether to say that ``key``, unknown in ``model``, belongs in the section of ``other``.

    A listener's keys depend on its mode, so another mode's listener keys are not
    offered, nor route keys to a listener that has no routes; ``listener`` and
    ``backend`` at the top level are arrays of tables, not keys to move. The sni/tls
    listener section is offered only for the keys a tcp listener lacks, and a
    certificate entry's keys only to a route or a listener that has certificates.
    """
    if other is model or key not in other.model_fields or (other is DocumentDoc and key in _ARRAYS):
        return False
    if other is TlsListenerDoc and key in TcpListenerDoc.model_fields:
        return False
    if other is CertFileDoc and not (model is RouteDoc or "certificates" in model.model_fields):
        return False
    if issubclass(model, ListenerDoc):
        if issubclass(other, ListenerDoc):
            return False
        if other is RouteDoc and "route" not in model.model_fields:
            return False
    return True


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    message = f"unknown key {quote(key)}"
    if model is None:
        return message
    allowed = list(model.model_fields)
    homes = [label for label, other in _SECTIONS if _may_live_in(key, other, model)]
    if homes:
        return f"{message} (it belongs in {' or '.join(homes)})"
    hint = suggest(key, allowed)
    if hint:
        return message + hint
    return f"{message} (expected one of: {', '.join(allowed)})"


_TYPE_NAMES = {
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _translate(detail: ErrorDetails, model: type[BaseModel]) -> tuple[Loc, str]:
    """Turn one pydantic error into ``(loc, message)`` in Portway's words.

    Unknown and missing keys are reported on the table that holds them, so the
    message can name the key.
    """
    loc: Loc = tuple(detail["loc"])
    kind = detail["type"]
    found = detail.get("input")
    if kind == "missing":
        return loc[:-1], f"missing required key {quote(loc[-1])}"
    if kind == "extra_forbidden":
        return loc[:-1], _unknown_key(str(loc[-1]), _model_at(model, loc[:-1]))
    if kind in ("value_error", "assertion_error"):
        error = (detail.get("ctx") or {}).get("error")
        if isinstance(error, KeyedValueError):
            loc = loc + error.key
        return loc, str(error) if error is not None else f"invalid value {quote(found)}"
    if kind == "list_type" and len(loc) == 1 and loc[0] in _ARRAYS and isinstance(found, dict):
        return loc, f"expected an array of tables, got a table: write [[{loc[0]}]], not [{loc[0]}]"
    if kind == "list_type" and loc[-1:] == ("route",) and isinstance(found, dict):
        return loc, "expected an array of tables, got a table: write [[listener.route]], not [listener.route]"
    if kind in ("model_type", "dict_type") and len(loc) == 1 and isinstance(found, list):
        return loc, f"expected a table, got a list: write [{loc[0]}], not [[{loc[0]}]]"
    if kind in _TYPE_NAMES:
        return loc, f"expected {_TYPE_NAMES[kind]}, got {quote(found)}"
    return loc, f"invalid value {quote(found)}"
