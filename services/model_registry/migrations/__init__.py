"""Versioned schema migrations, applied in order inside one locked transaction.

Each migration is a module `vNNNN_<what>.py` with `VERSION`, `DESCRIPTION` and `upgrade(connection)`.
Applied versions are recorded in `schema_migrations`; two processes starting together apply each
migration once (advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite). Run them at start
(`--migrate-on-start`, the default) or alone with `lumiserve registry migrate [--database-url ...]`.
"""

from __future__ import annotations

import logging
from types import ModuleType

from sqlalchemy import insert, select

from services.model_registry.db import MIGRATION_LOCK, Database
from services.model_registry.migrations import v0001_initial
from services.model_registry.records import now_us
from services.model_registry.schema import schema_migrations

log = logging.getLogger(__name__)

MIGRATIONS: tuple[ModuleType, ...] = (v0001_initial,)
LATEST = MIGRATIONS[-1].VERSION


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer registry than this one."""


def applied_versions(database: Database) -> list[int]:
    with database.read() as connection:
        if not database.engine.dialect.has_table(connection, schema_migrations.name):
            return []
        return list(connection.scalars(select(schema_migrations.c.version).order_by("version")))


def migrate(database: Database) -> list[int]:
    """Applies the missing migrations; returns the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    with database.write() as connection:
        database.lock(connection, MIGRATION_LOCK)
        schema_migrations.create(connection, checkfirst=True)
        done = set(connection.scalars(select(schema_migrations.c.version)))
        if done and max(done) > LATEST:
            raise SchemaTooNew(
                f"database schema version {max(done)} is newer than this registry's {LATEST}: upgrade it"
            )
        for migration in MIGRATIONS:
            if migration.VERSION in done:
                continue
            log.info("applying migration %04d: %s", migration.VERSION, migration.DESCRIPTION)
            migration.upgrade(connection)
            connection.execute(
                insert(schema_migrations).values(
                    version=migration.VERSION, description=migration.DESCRIPTION, applied_time=now_us()
                )
            )
            applied_now.append(migration.VERSION)
    return applied_now
