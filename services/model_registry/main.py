"""Entry point: `lumiserve registry [flags]` serves; `lumiserve registry migrate [flags]` only applies
the schema migrations (for deployments that start with --migrate-on-start false)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from prometheus_client import Gauge

from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.common.errors import ServiceError
from services.common.logs import configure_logging
from services.common.server import ServiceBinding, ServiceHost, run_until_signal
from services.model_registry import migrations
from services.model_registry.auth import Authorizer, read_token_file
from services.model_registry.catalog import load_catalog, seed
from services.model_registry.db import Database
from services.model_registry.maintenance import maintain
from services.model_registry.registry import Registry
from services.model_registry.servicer import ModelRegistryServicer
from services.model_registry.settings import RegistrySettings
from services.model_registry.store import Store
from services.model_registry.watch import ChangeHub

log = logging.getLogger("services.model_registry")

RETRY_MAX_SECONDS = 10.0


class RegistryHost(ServiceHost):
    """Ends Watch streams as soon as draining starts: they never finish by themselves, and clients
    resume them on another replica from their last revision."""

    def __init__(self, *args: object, hub: ChangeHub, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.hub = hub

    async def drain(self, grace: float | None = None) -> None:
        await self.hub.close()
        await super().drain(grace)


def open_database(settings: RegistrySettings) -> Database:
    return Database(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        connect_timeout=settings.db_connect_timeout_seconds,
        pool_size=settings.db_threads,
    )


def authorizer(settings: RegistrySettings) -> Authorizer:
    return Authorizer.from_tokens(
        admin=[*settings.registry_admin_tokens, *read_token_file(settings.registry_admin_tokens_file)],
        instance=[
            *settings.registry_instance_tokens,
            *read_token_file(settings.registry_instance_tokens_file),
        ],
        gateway=settings.registry_gateway_tokens,
        trust_roles_header=settings.registry_trust_roles_header,
    )


class RegistryApp:
    """The registry process: database, data plane, servicer and host. Tests run it in-process."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.catalog = load_catalog(settings.catalog_file) if settings.seed_catalog else None
        self.database = open_database(settings)
        self.store = Store(self.database)
        self.registry = Registry(
            self.store,
            heartbeat_ttl=settings.heartbeat_ttl_seconds,
            threads=settings.db_threads,
            poll_interval=settings.watch_poll_seconds,
        )
        servicer = ModelRegistryServicer(
            self.registry,
            authorizer(settings),
            settings.heartbeat_interval_seconds,
            settings.heartbeat_ttl_seconds,
        )
        self.host = RegistryHost(
            settings, [ServiceBinding.of(pb_grpc, "ModelRegistryService", servicer)], hub=self.registry.hub
        )
        hub = self.registry.hub
        Gauge(
            "lumiserve_registry_watch_streams", "Open Watch streams.", registry=self.host.metrics_registry
        ).set_function(lambda: hub.streams)
        Gauge(
            "lumiserve_registry_revision",
            "Latest change-log revision seen.",
            registry=self.host.metrics_registry,
        ).set_function(lambda: hub.latest)
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.host.address

    async def _prepare_database(self) -> None:
        """Migrates (or checks the schema) and seeds; waits for an unreachable database, retrying."""
        delay = 0.5
        while True:
            try:
                if self.settings.migrate_on_start:
                    applied = await self.registry.run(migrations.migrate, self.database)
                    if applied:
                        log.info("schema migrated to version %d", applied[-1])
                else:
                    versions = await self.registry.run(migrations.applied_versions, self.database)
                    if (versions[-1] if versions else 0) != migrations.LATEST:
                        raise RuntimeError(
                            f"database schema is at version {versions[-1] if versions else 0}, this registry "
                            f"needs {migrations.LATEST}: run `lumiserve registry migrate`"
                        )
                if self.catalog is not None:
                    await seed(self.registry, self.catalog, overwrite=self.settings.catalog_overwrite)
                return
            except ServiceError as error:
                log.warning(
                    "database %s not ready (%s); retrying in %.1f s",
                    self.database.describe(),
                    error.message,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def startup(self) -> None:
        await self._prepare_database()
        await self.registry.hub.start()
        self._maintenance = asyncio.create_task(
            maintain(
                self.registry,
                self.settings.expiry_interval,
                self.settings.down_instance_retention_seconds,
                self.settings.change_retention_seconds,
            ),
            name="registry-maintenance",
        )

    async def shutdown(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.registry.hub.close()
        await self.registry.close()
        self.database.dispose()

    async def start(self) -> None:
        """Starts serving (for tests and embedding; the process uses run_until_signal)."""
        await self.host.start()
        await self.startup()
        await self.host.set_serving(True)

    async def stop(self, grace: float = 0) -> None:
        await self.host.drain(grace=grace)
        await self.shutdown()


def migrate_command(settings: RegistrySettings) -> int:
    database = open_database(settings)
    try:
        applied = migrations.migrate(database)
    except ServiceError as error:
        print(f"lumiserve registry migrate: {error.message}", file=sys.stderr)
        return 1
    finally:
        database.dispose()
    done = f"applied {', '.join(map(str, applied))}" if applied else "already up to date"
    print(f"{database.describe()}: schema version {migrations.LATEST} ({done})")
    return 0


async def serve(settings: RegistrySettings) -> int:
    app = RegistryApp(settings)
    log.info("database %s", app.database.describe())
    return await run_until_signal(app.host, app.startup, app.shutdown)


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["migrate"]:
        settings = RegistrySettings.load(argv[1:])
        configure_logging(settings.log_level, settings.log_json)
        return migrate_command(settings)
    settings = RegistrySettings.load(argv)
    configure_logging(settings.log_level, settings.log_json)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
