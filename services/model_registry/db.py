"""The database connection: one SQLAlchemy Core code path for SQLite (WAL file) and PostgreSQL.

Write transactions are serialised where they append to the change log, so revisions are assigned in
commit order (a watcher reading `revision > N` can never miss a later-committed smaller revision):
SQLite takes the write lock at BEGIN IMMEDIATE, PostgreSQL a transaction-scoped advisory lock.
Connection failures become Unavailable; the pool pings before reuse, so service resumes by itself
when the database returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url

from services.common.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# pg_advisory_xact_lock keys ("lumi" and "migr" in ASCII).
CHANGE_LOG_LOCK = 0x6C756D69
MIGRATION_LOCK = 0x6D696772

_WRITE = "lumiserve_write"


class DatabaseUrlError(ValueError):
    """The database URL is malformed or names an unsupported database."""


def parse_url(url: str) -> URL:
    """Parses a database URL; plain `postgresql://` gets the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise DatabaseUrlError(f"malformed database URL {url!r}: {error}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed):
            raise DatabaseUrlError(
                "an in-memory SQLite database loses every write: use sqlite:///path/file.db"
            )
        return parsed
    raise DatabaseUrlError(f"unsupported database {backend!r}: use sqlite:///file.db or postgresql://...")


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else ''}"


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError) as error:
        log.warning("database unavailable: %s", _first_line(error))
        raise Unavailable(f"registry database unavailable ({_first_line(error)}); retry later") from None
    except exc.DataError as error:  # a backstop: validation should have refused the value first
        raise InvalidArgument("", f"a value cannot be stored: {_first_line(error)}") from None
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise Unavailable(f"registry database connection lost ({_first_line(error)}); retry") from None
        raise


class Database:
    """Engine, transactions and the dialect-specific bits (pragmas, locks)."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        connect_timeout: float = 5.0,
        pool_size: int = 4,
    ) -> None:
        self.url = parse_url(url)
        self.backend = self.url.get_backend_name()
        if self.is_sqlite:
            Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            connect_args = {"check_same_thread": False, "timeout": 30.0}
        else:
            connect_args = {"connect_timeout": max(1, round(connect_timeout))}
        self.engine = create_engine(
            self.url,
            connect_args=connect_args,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=connect_timeout,
        )
        if self.is_sqlite:
            self._configure_sqlite(sqlite_synchronous)
        self._writer = self.engine.execution_options(**{_WRITE: True})
        self._snapshot_reader = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="REPEATABLE READ")
        )

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    def _configure_sqlite(self, synchronous: str) -> None:
        @event.listens_for(self.engine, "connect")
        def on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # We issue BEGIN ourselves (below) so DDL is transactional and writers lock up front.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before it is acknowledged (survives power loss, not only kill -9).
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def on_begin(connection: Connection) -> None:
            write = connection.get_execution_options().get(_WRITE, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed when the block ends without an exception."""
        with _unavailable_on_connection_errors(), self._writer.begin() as connection:
            yield connection

    @contextmanager
    def read(self, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction; `snapshot` makes every statement see the same committed state."""
        engine = self._snapshot_reader if snapshot else self.engine
        with _unavailable_on_connection_errors(), engine.begin() as connection:
            yield connection

    def lock(self, connection: Connection, key: int) -> None:
        """Serialises transactions taking the same key until they end (SQLite: already serialised)."""
        if not self.is_sqlite:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def ping(self) -> None:
        with self.read() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
