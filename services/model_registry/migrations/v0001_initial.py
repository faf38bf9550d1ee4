"""Catalog, artifacts, instances and the change log.

This first migration creates the tables as schema.py defines them. When a later migration alters one
of these tables, freeze their version-1 definitions here first, so a database migrated from empty
goes through the same steps as an old one.
"""

from __future__ import annotations

from sqlalchemy import Connection

from services.model_registry import schema

VERSION = 1
DESCRIPTION = "catalog, artifacts, instances, change log"


def upgrade(connection: Connection) -> None:
    tables = [t for t in schema.metadata.sorted_tables if t is not schema.schema_migrations]
    schema.metadata.create_all(connection, tables=tables)
