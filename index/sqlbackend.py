"""The two databases the document store runs on: SQLite (one file, the default) and PostgreSQL.

``DocumentStore`` writes its SQL once, with ``?`` placeholders and statements both databases
accept (``INSERT ... ON CONFLICT``, ``RETURNING``); a backend translates placeholders, column
types and the few dialect differences, and hands out connections:

* SQLite: a connection per thread, WAL, ``BEGIN IMMEDIATE`` transactions (one writer at a time).
* PostgreSQL: a psycopg 3 connection pool (psycopg-pool: the maintained pool of the maintained
  driver); each read borrows a connection and returns its rows fetched; a transaction holds one
  connection from BEGIN to COMMIT. Writers that take sequence numbers serialise on the counter
  row, so sequence order is commit order, as with SQLite's single writer.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class StoreUnavailable(Exception):
    """The database does not answer (PostgreSQL down, network gone): the API answers 503."""


class SchemaError(Exception):
    """The database's schema is not one this strop can use (newer, or a migration left half-done)."""


class Row(tuple):
    """A result row readable by position and by column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


class Result:
    """Fetched rows of one statement, with the cursor-like surface the store uses."""

    def __init__(self, rows: list[Any], rowcount: int):
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


# -- SQLite ---------------------------------------------------------------------------------
def _enable_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch to WAL, retrying while another connection holds the lock. SQLite answers a journal-mode
    change that meets a concurrent one with SQLITE_BUSY at once, without its busy handler, so replicas
    opening a fresh database together (a compose start) would otherwise fail with "database is locked"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SQLiteBackend:
    name = "sqlite"
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def script(self, ddl: str) -> None:
        self.conn().executescript(ddl)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# -- PostgreSQL -----------------------------------------------------------------------------
_PG_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


def _row_factory(cursor: Any) -> Any:
    index = {c.name: i for i, c in enumerate(cursor.description or [])}
    return lambda values: Row(values, index)


class _PgConn:
    """One borrowed connection, answering like a sqlite3 connection with ``?`` placeholders."""

    def __init__(self, conn: Any):
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cur = self._conn.execute(_pg(sql), tuple(params), prepare=False)
        rows = cur.fetchall() if cur.description is not None else []
        return Result(rows, cur.rowcount)

    def executemany(self, sql: str, seq: Any) -> Result:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), [tuple(p) for p in seq])
            return Result([], cur.rowcount)


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresBackend:
    name = "postgresql"

    def __init__(self, url: str, max_size: int = 16):
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.integrity_errors: tuple[type[Exception], ...] = (psycopg.IntegrityError,)
        self.errors: tuple[type[Exception], ...] = (psycopg.Error, StoreUnavailable)
        # a request waits at most 5 s for a connection: then the store counts as unavailable (503, or a search
        # answered from the loaded version)
        self.pool = ConnectionPool(url, min_size=1, max_size=max_size, open=False, timeout=5.0,
                                   kwargs={"autocommit": True, "row_factory": _row_factory})
        try:
            self.pool.open(wait=True, timeout=10.0)
        except Exception as e:  # noqa: BLE001 - psycopg_pool.PoolTimeout and connection errors alike
            self.pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {_redact(url)}: {e}") from None

    def describe(self) -> str:
        return _redact(self.url)

    def conn(self) -> _Reader:
        return _Reader(self)

    @contextlib.contextmanager
    def tx(self) -> Iterator[_PgConn]:
        with self._borrow() as conn, conn.transaction():
            yield _PgConn(conn)

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[Any]:
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as e:
            raise StoreUnavailable(f"PostgreSQL at {_redact(self.url)} did not answer: {e}") from None

    def script(self, ddl: str) -> None:
        for pattern, repl in _PG_TYPES:
            ddl = pattern.sub(repl, ddl)
        statements = [s.strip() for s in re.sub(r"--[^\n]*", "", ddl).split(";") if s.strip()]
        with self._borrow() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7261738)")  # replicas starting together create once
            for s in statements:
                conn.execute(s)

    def close(self) -> None:
        self.pool.close()


class _Reader:
    """Reads outside a transaction: each statement borrows a pooled connection and returns its rows."""

    def __init__(self, backend: PostgresBackend):
        self._backend = backend

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._backend._borrow() as conn:
            return _PgConn(conn).execute(sql, params)


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def open_backend(url: str) -> SQLiteBackend | PostgresBackend:
    """``sqlite:///path/to/strop.db`` (or a plain path) or ``postgresql://user@host:5432/db``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url)
    if url.startswith("sqlite:///"):
        return SQLiteBackend(url[len("sqlite:///"):])  # sqlite:///rel/path, sqlite:////abs/path
    if "://" in url:
        raise ValueError(f"store URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return SQLiteBackend(url)
