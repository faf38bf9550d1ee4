"""Who may write to the registry.

Reads (Get/List/Resolve/Watch) are open: the registry sits behind the gateway or inside the cluster.
Writes need a role, proven by `authorization: Bearer <token>` metadata:
- an admin token (settings `registry_admin_tokens` / `registry_admin_tokens_file`) has the `admin` role:
  catalog and artifact writes, and everything an instance may do;
- an instance token (`registry_instance_tokens` / `_file`) has the `instance` role: RegisterInstance,
  Heartbeat, DeregisterInstance (any instance id: one shared secret per deployment, kept simple);
- a gateway token (`registry_gateway_tokens`) marks the caller as the trusted gateway: its
  `x-lumiserve-roles: admin[,instance]` header is honoured, so the gateway authenticates end users with
  its own API keys and passes their roles on. Without a gateway token the header is ignored, unless
  `registry_trust_roles_header` is set (only for deployments where nothing but the gateway can reach
  the registry, e.g. a NetworkPolicy).
No credentials -> UNAUTHENTICATED; an unknown token -> UNAUTHENTICATED; a valid caller without the
role -> PERMISSION_DENIED. Token files hold one token per line ('#' comments), read at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import PermissionDenied, Unauthenticated

ADMIN = "admin"
INSTANCE = "instance"
AUTHORIZATION_KEY = "authorization"
ROLES_KEY = "x-lumiserve-roles"

Metadata = Iterable[tuple[str, str | bytes]]


def _digest(token: str) -> bytes:
    # Tokens are compared by digest, so lookup time does not depend on how much of a token matches.
    return hashlib.sha256(token.encode()).digest()


def read_token_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _parse_roles(value: str) -> set[str]:
    roles = {role.strip().lower() for role in value.split(",") if role.strip()}
    return roles | {INSTANCE} if ADMIN in roles else roles


@dataclass(frozen=True)
class Authorizer:
    admin_tokens: frozenset[bytes] = frozenset()
    instance_tokens: frozenset[bytes] = frozenset()
    gateway_tokens: frozenset[bytes] = frozenset()
    trust_roles_header: bool = False

    @classmethod
    def from_tokens(
        cls,
        admin: Sequence[str] = (),
        instance: Sequence[str] = (),
        gateway: Sequence[str] = (),
        trust_roles_header: bool = False,
    ) -> Authorizer:
        def digests(tokens: Sequence[str]) -> frozenset[bytes]:
            return frozenset(_digest(t) for t in tokens if t)

        return cls(digests(admin), digests(instance), digests(gateway), trust_roles_header)

    def roles(self, metadata: Metadata) -> set[str]:
        """The caller's roles; raises Unauthenticated when it has no valid credentials."""
        token = roles_header = None
        for key, value in metadata:
            text = value.decode() if isinstance(value, bytes) else value
            if key == AUTHORIZATION_KEY:
                token = text
            elif key == ROLES_KEY:
                roles_header = text
        if token is not None:
            scheme, _, secret = token.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            digest = _digest(secret.strip())
            if digest in self.admin_tokens:
                return {ADMIN, INSTANCE}
            if digest in self.instance_tokens:
                return {INSTANCE}
            if digest in self.gateway_tokens:
                return _parse_roles(roles_header or "")
            raise Unauthenticated("unknown registry token")
        if roles_header is not None and self.trust_roles_header:
            return _parse_roles(roles_header)
        raise Unauthenticated(
            "writes need credentials: send 'authorization: Bearer <token>' metadata"
            + (
                f" ({ROLES_KEY} is only honoured from the trusted gateway)"
                if roles_header is not None
                else ""
            )
        )

    def require(self, metadata: Metadata, role: str, action: str) -> None:
        if role not in self.roles(metadata):
            raise PermissionDenied(f"{action} needs the {role} role")
