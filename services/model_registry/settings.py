"""Settings of the model registry (flags or LUMISERVE_* variables; `lumiserve registry --help`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.settings import ServerSettings, SettingsError, describe, setting
from services.model_registry.db import DatabaseUrlError, parse_url

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.yaml")


@dataclass
class RegistrySettings(ServerSettings):
    """The lumiserve model registry: catalog, artifacts, live instances, watch."""

    port: int = setting(50060, "gRPC port; 0 picks a free one.", min=0, max=65535)
    metrics_port: int = setting(
        9160, "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables.", min=-1, max=65535
    )
    database_url: str = setting(
        "sqlite:///lumiserve-registry.db",
        "Database: sqlite:///path/file.db (WAL; embedded) or postgresql://user@host:5432/db (clusters).",
    )
    migrate_on_start: bool = setting(
        True, "Apply schema migrations at start (else: `lumiserve registry migrate`)."
    )
    seed_catalog: bool = setting(True, "Add the models of catalog_file at start (idempotent).")
    catalog_file: Path = setting(DEFAULT_CATALOG, "YAML catalog seeded at start.")
    catalog_overwrite: bool = setting(
        False, "Seeding replaces stored models that differ from the file (default: only adds missing ones)."
    )
    heartbeat_interval_seconds: float = setting(5.0, "How often instances are told to heartbeat.", min=0.05)
    heartbeat_ttl_seconds: float = setting(
        15.0, "An instance without a heartbeat for this long is marked down.", min=0.1
    )
    expiry_check_seconds: float = setting(0.0, "How often to look for expired instances; 0 = TTL / 4.", min=0)
    down_instance_retention_seconds: float = setting(
        3600.0, "Instances down this long are removed (a DELETED change).", min=1
    )
    change_retention_seconds: float = setting(
        7 * 86400.0, "Changes older than this are compacted; watchers cannot resume before them.", min=60
    )
    watch_poll_seconds: float = setting(
        0.25, "How often the change log is read for writes made by other registry processes.", min=0.01
    )
    db_threads: int = setting(4, "Database worker threads (and pooled connections).", min=1, max=64)
    db_connect_timeout_seconds: float = setting(5.0, "Give up connecting to the database after this.", min=1)
    sqlite_synchronous: str = setting(
        "FULL",
        "SQLite commit durability: FULL survives power loss, NORMAL only crashes.",
        choices=["FULL", "NORMAL"],
    )
    registry_admin_tokens: list[str] = setting([], "Admin tokens (comma-separated): catalog writes.")
    registry_admin_tokens_file: Path | None = setting(None, "File of admin tokens, one per line.")
    registry_instance_tokens: list[str] = setting([], "Instance tokens: register/heartbeat/deregister.")
    registry_instance_tokens_file: Path | None = setting(None, "File of instance tokens, one per line.")
    registry_gateway_tokens: list[str] = setting(
        [], "Tokens of the trusted gateway, whose x-lumiserve-roles header is honoured."
    )
    registry_trust_roles_header: bool = setting(
        False, "Honour x-lumiserve-roles from any caller (only when nothing but the gateway reaches us)."
    )

    def validate(self) -> None:
        super().validate()
        try:
            parse_url(self.database_url)
        except DatabaseUrlError as error:
            raise SettingsError(f"{describe('database_url')}: {error}") from None
        if self.heartbeat_interval_seconds >= self.heartbeat_ttl_seconds:
            interval, ttl = describe("heartbeat_interval_seconds"), describe("heartbeat_ttl_seconds")
            raise SettingsError(f"{interval} must be less than {ttl}")
        if self.seed_catalog and not self.catalog_file.is_file():
            raise SettingsError(f"{describe('catalog_file')}: {self.catalog_file} does not exist")
        for name in ("registry_admin_tokens_file", "registry_instance_tokens_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise SettingsError(f"{describe(name)}: {path} does not exist")

    @property
    def expiry_interval(self) -> float:
        return self.expiry_check_seconds or self.heartbeat_ttl_seconds / 4
