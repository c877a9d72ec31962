"""Read a gateway listener's keys from where the configuration says they are.

The keys never sit in the configuration file itself: v1 passphrases and the v2 keyring are
read from their own files (``secrets_file``, ``keyring_file``; keep them ``chmod 600``) or
from environment variables (``secrets_env``, ``keyring_env``). They are read when the
configuration is loaded, so ``portway check`` and a reload report a missing or malformed key
file, and every reload reads them again, which is how keys are rotated.

Messages name the file or variable and the line, never the key material.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from portway.config.model import GatewaySpec
from portway.proto import gateway

__all__ = ["GatewayKeys", "KeyProblem", "load_gateway_keys", "weak_secret_warnings"]


class KeyProblem(ValueError):
    """A key source that cannot be used; ``key`` is the config key that names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class GatewayKeys:
    """The v1 passphrases (empty when v1 is off) and the v2 keyring (``None`` without one)."""

    secrets: tuple[bytes, ...]
    keyring: gateway.Keyring | None


def _read(file: str | None, env: str | None, what: str) -> tuple[str, str, str] | None:
    """``(text, source for messages, config key)`` of a key source, or ``None`` if not set."""
    if file is not None:
        key = f"{what}_file"
        try:
            with open(file, encoding="utf-8") as f:
                return f.read(), file, key
        except FileNotFoundError:
            raise KeyProblem(key, f"{file}: no such file") from None
        except UnicodeDecodeError:
            raise KeyProblem(key, f"{file}: not UTF-8 text") from None
        except OSError as exc:
            raise KeyProblem(key, f"{file}: cannot read it ({exc.strerror})") from None
    if env is not None:
        key = f"{what}_env"
        text = os.environ.get(env)
        if text is None:
            raise KeyProblem(key, f"the environment variable {env} is not set")
        return text, f"${env}", key
    return None


def load_gateway_keys(spec: GatewaySpec) -> GatewayKeys:
    """Read and parse the keys of ``spec``; :class:`KeyProblem` says what is wrong, where."""
    secrets: tuple[bytes, ...] = ()
    keyring: gateway.Keyring | None = None
    source = _read(spec.secrets_file, spec.secrets_env, "secrets")
    if source is not None:
        text, where, key = source
        try:
            secrets = tuple(gateway.load_secrets(text, source=where))
        except ValueError as exc:
            raise KeyProblem(key, str(exc)) from None
    source = _read(spec.keyring_file, spec.keyring_env, "keyring")
    if source is not None:
        text, where, key = source
        try:
            keyring = gateway.Keyring.parse(text, source=where)
        except ValueError as exc:
            raise KeyProblem(key, str(exc)) from None
    return GatewayKeys(secrets=secrets, keyring=keyring)


def weak_secret_warnings(keys: GatewayKeys, listener: str) -> list[str]:
    """One sentence per weak v1 passphrase (never the passphrase itself)."""
    warnings = []
    for number, secret in enumerate(keys.secrets, 1):
        why = gateway.weak_secret(secret)
        if why is not None:
            warnings.append(f"listener {listener}: v1 passphrase #{number}: {why}")
    return warnings
