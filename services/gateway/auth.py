"""API-key authentication. Keys are stored as SHA-256 hashes, each with a tenant, roles and a class.

Key file (YAML):

    keys:
      - name: ci-bot              # for people reading the file
        sha256: 9f86d08...        # `python -m services.gateway.auth hash <key>` prints it
        tenant: team-a
        roles: [user]             # user, admin
        class: standard           # metrics label; default "standard"

Clients send `authorization: Bearer <key>` (or `x-api-key: <key>`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.common.errors import Unauthenticated
from services.common.settings import SettingsError

ROLES = ("user", "admin")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    tenant: str
    roles: frozenset[str]
    tenant_class: str = "standard"

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


# The caller when auth is explicitly disabled (embedded stack on localhost): full rights.
LOCAL_PRINCIPAL = Principal(tenant="default", roles=frozenset(ROLES), tenant_class="local")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ls_" + secrets.token_urlsafe(32)


class ApiKeyStore:
    """Looks up callers by the SHA-256 of their key; the keys themselves are never held."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._by_hash = {digest.lower(): principal for digest, principal in entries}

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def from_sources(cls, path: Path | None, inline: Sequence[str]) -> ApiKeyStore:
        entries = [*_read_file(path)] if path else []
        entries += [_parse_inline(item) for item in inline]
        return cls(entries)

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        key = presented_key(metadata)
        if key is None:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
        digest = hash_key(key)
        for known, principal in self._by_hash.items():  # constant-time compare per entry
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("invalid API key")


def presented_key(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for name, value in metadata:
        text = value.decode() if isinstance(value, bytes) else value
        if name == "authorization" and text.lower().startswith("bearer "):
            return text[7:].strip() or None
        if name == "x-api-key" and text:
            return text.strip()
    return None


def _principal(tenant: str, roles: Iterable[str], tenant_class: str, where: str) -> Principal:
    roles = frozenset(roles)
    if not tenant:
        raise SettingsError(f"{where}: tenant is empty")
    if not roles or not roles <= set(ROLES):
        raise SettingsError(f"{where}: roles must be among {', '.join(ROLES)}, got {sorted(roles)}")
    return Principal(tenant, roles, tenant_class or "standard")


def _check_digest(digest: str, where: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise SettingsError(f"{where}: sha256 must be 64 hex digits (store the hash, never the key)")
    return digest


def _read_file(path: Path) -> list[tuple[str, Principal]]:
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SettingsError(f"API key file {path}: {error}") from None
    entries = []
    for index, item in enumerate(document.get("keys", [])):
        where = f"{path} keys[{index}]"
        digest = _check_digest(str(item.get("sha256", "")), where)
        principal = _principal(
            str(item.get("tenant", "")), item.get("roles", ["user"]), str(item.get("class", "")), where
        )
        entries.append((digest, principal))
    return entries


def _parse_inline(item: str) -> tuple[str, Principal]:
    """'sha256:<hex>:tenant:role[+role][:class]'."""
    parts = item.split(":")
    if len(parts) not in (4, 5) or parts[0] != "sha256":
        raise SettingsError(
            f"API key entry {item[:20]!r}...: expected 'sha256:<hex>:tenant:role[+role][:class]'"
        )
    digest = _check_digest(parts[1], "API key entry")
    return digest, _principal(
        parts[2], parts[3].split("+"), parts[4] if len(parts) == 5 else "", "API key entry"
    )


if __name__ == "__main__":  # python -m services.gateway.auth hash <key> | new
    if sys.argv[1:2] == ["hash"] and len(sys.argv) == 3:
        print(hash_key(sys.argv[2]))
    elif sys.argv[1:] == ["new"]:
        key = new_key()
        print(f"key:    {key}\nsha256: {hash_key(key)}")
    else:
        sys.exit("usage: python -m services.gateway.auth hash KEY | new")
