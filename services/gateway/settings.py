"""Gateway settings (LUMISERVE_* environment variables or flags; `lumiserve gateway --help`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import ServerSettings, SettingsError, describe, setting


@dataclass
class GatewaySettings(ServerSettings):
    """The lumiserve gateway."""

    port: int = setting(50050, "Public gRPC port; 0 picks a free one.", min=0, max=65535)
    metrics_port: int = setting(
        9100, "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables.", min=-1, max=65535
    )
    registry_address: str = setting("", "host:port of the model registry; its Watch stream feeds routing.")
    registry_token: str = setting(
        "", "Credential the gateway presents to the registry (admin calls relayed)."
    )
    static_backends: list[str] = setting(
        [], "Fallback backends without a registry: 'diffusion=host:port', 'vision_language=host:port', ..."
    )
    api_keys_file: Path | None = setting(
        None, "YAML file of API keys (hashed); see services/gateway/auth.py."
    )
    api_keys: list[str] = setting([], "API keys as 'sha256:<hex>:tenant:role[+role][:class]' entries.")
    auth_disabled: bool = setting(False, "Serve without API keys. Refused unless host is a loopback address.")
    tenant_requests_per_second: float = setting(20.0, "Token-bucket refill rate per tenant.", min=0.001)
    tenant_burst: int = setting(40, "Token-bucket size per tenant.", min=1)
    tenant_max_concurrency: int = setting(16, "Concurrent calls per tenant.", min=1)
    max_in_flight: int = setting(512, "Concurrent calls through the gateway in total.", min=1)
    max_request_bytes: int = setting(
        32 * 1024 * 1024, "Largest request accepted (images included).", min=1024
    )
    backend_ca_file: Path | None = setting(None, "CA bundle to verify backends: TLS to backends when set.")
    backend_cert_file: Path | None = setting(None, "Client certificate for mTLS to backends.")
    backend_key_file: Path | None = setting(None, "Client key for mTLS to backends.")

    def validate(self) -> None:
        super().validate()
        if self.auth_disabled and not _is_loopback(self.host):
            raise SettingsError(
                f"{describe('auth_disabled')} is only allowed when listening on a loopback address, "
                f"not {self.host!r}"
            )
        if not self.auth_disabled and self.api_keys_file is None and not self.api_keys:
            raise SettingsError(
                f"no API keys: set {describe('api_keys_file')} or {describe('api_keys')}, "
                f"or {describe('auth_disabled')} for a local stack"
            )
        if not self.registry_address and not self.static_backends:
            raise SettingsError(f"set {describe('registry_address')} or {describe('static_backends')}")
        if (self.backend_cert_file is None) != (self.backend_key_file is None):
            raise SettingsError(
                f"{describe('backend_cert_file')} and {describe('backend_key_file')} go together"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
