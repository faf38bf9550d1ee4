"""Helpers for tests that need a registry: throw-away databases on SQLite or PostgreSQL and an
in-process registry server on 127.0.0.1 with an ephemeral port. No pytest here (tests wrap these)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from services.model_registry.main import RegistryApp
from services.model_registry.settings import RegistrySettings

# The PostgreSQL server tests use (trust auth); LUMISERVE_TEST_POSTGRES_URL names another.
POSTGRES_URL = os.environ.get(
    "LUMISERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"
INSTANCE_TOKEN = "test-instance-token"
GATEWAY_TOKEN = "test-gateway-token"
BACKENDS = ("sqlite", "postgresql")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ADMIN = bearer(ADMIN_TOKEN)
INSTANCE = bearer(INSTANCE_TOKEN)


@functools.cache
def postgres_unavailable_reason(url: str = POSTGRES_URL) -> str | None:
    """None when the test PostgreSQL server answers, else why not (tests skip with it)."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as error:
        return f"PostgreSQL at {make_url(url).render_as_string()} is not reachable: {type(error).__name__}"
    finally:
        engine.dispose()


def with_search_path(url: str, schema: str) -> str:
    parsed = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return parsed.render_as_string(hide_password=False)


@contextmanager
def postgres_schema(url: str = POSTGRES_URL) -> Iterator[str]:
    """A fresh schema (unique per call, dropped afterwards); yields a URL whose tables live in it."""
    schema = f"lumiserve_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(url, schema)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def database_url(backend: str, directory: Path) -> Iterator[str]:
    """A throw-away database of `backend` ("sqlite" file in `directory`, or a PostgreSQL schema)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'registry-{uuid.uuid4().hex[:8]}.db'}"
    else:
        with postgres_schema() as url:
            yield url


def registry_settings(database: str, **overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "database_url": database,
        "seed_catalog": False,
        "drain_grace_seconds": 0.0,
        "watch_poll_seconds": 0.05,
        "registry_admin_tokens": [ADMIN_TOKEN],
        "registry_instance_tokens": [INSTANCE_TOKEN],
        "registry_gateway_tokens": [GATEWAY_TOKEN],
        **overrides,
    }
    settings = RegistrySettings(**values)
    settings.validate()
    return settings


@asynccontextmanager
async def running_registry(database: str, **overrides: Any) -> AsyncIterator[RegistryApp]:
    """A registry serving on 127.0.0.1:<ephemeral> until the block ends."""
    app = RegistryApp(registry_settings(database, **overrides))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


class RegistryProcess:
    """`python -m services.model_registry.main` as a child process on an ephemeral port, logging to a
    file, for tests and benchmarks that kill it or run several."""

    def __init__(self, database: str, directory: Path, name: str = "registry", *flags: str) -> None:
        self.log_path = directory / f"{name}.log"
        self.ready_path = directory / f"{name}.ready.json"
        self.ready_path.unlink(missing_ok=True)
        env = {
            **os.environ,
            "LUMISERVE_REGISTRY_ADMIN_TOKENS": ADMIN_TOKEN,
            "LUMISERVE_REGISTRY_INSTANCE_TOKENS": INSTANCE_TOKEN,
        }
        command = [
            sys.executable, "-m", "services.model_registry.main",
            "--port", "0", "--metrics-port", "-1", "--database-url", database, "--seed-catalog", "false",
            "--watch-poll-seconds", "0.05", "--drain-grace-seconds", "0",
            "--ready-file", str(self.ready_path), *flags,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.address = ""

    async def ready(self, timeout: float = 60.0) -> str:
        """Waits until it serves; returns its address."""
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"registry did not start:\n{self.log_path.read_text(errors='replace')}")
            await asyncio.sleep(0.05)
        self.address = f"127.0.0.1:{json.loads(self.ready_path.read_text())['port']}"
        return self.address

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (drain) and the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)
