"""A small asyncio front for a psycopg2 connection pool: blocking queries run in worker threads.

Why threads and not an async driver: psycopg2 is already the project's Postgres client (sinks,
migrations), and history queries are few and short next to the WebSocket fan-out. The executor has
exactly as many threads as the pool has connections, so a query never waits for a connection
inside a thread (and ``PoolError: exhausted`` cannot happen); callers queue in the executor instead.

Connections are opened lazily (a push server whose Postgres is down still serves live streams) and
read-only with a statement timeout, so a bad history query can neither write nor run away. A
connection that failed is closed, not returned to the pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
from psycopg2 import pool as pg_pool
from psycopg2 import sql

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
Query = str | sql.Composable


class DatabaseUnavailableError(Exception):
    """Postgres could not answer (down, timeout, missing table); the message names no secret."""


class AsyncPgPool:
    """Runs parameterised read-only queries on a bounded pool without blocking the event loop."""

    def __init__(self, dsn: str, *, size: int, statement_timeout_ms: int = 5000,
                 connect_timeout_s: int = 3, application_name: str = "push-server") -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._pool = pg_pool.ThreadedConnectionPool(
            0, size, dsn, connect_timeout=connect_timeout_s, application_name=application_name,
            options=f"-c statement_timeout={statement_timeout_ms} -c default_transaction_read_only=on",
        )
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="pg")
        self._closed = False

    async def fetch(self, query: Query, params: Sequence[Any]) -> list[Row]:
        """All rows of one query; parameters are always passed separately, never formatted in."""
        if self._closed:
            raise DatabaseUnavailableError("pool closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._fetch, query, params))

    def _fetch(self, query: Query, params: Sequence[Any]) -> list[Row]:
        try:
            conn = self._pool.getconn()
        except psycopg2.Error as exc:
            raise DatabaseUnavailableError(f"postgres: {type(exc).__name__}") from exc
        broken = False
        try:
            with conn, conn.cursor() as cur:  # one transaction, committed (read-only) or rolled back
                cur.execute(query, params)
                return list(cur.fetchall())
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DatabaseUnavailableError(f"postgres: {type(exc).__name__}: {_first_line(exc)}") from exc
        except psycopg2.Error as exc:  # e.g. a missing table: the schema is not migrated
            raise DatabaseUnavailableError(f"postgres: {type(exc).__name__}: {_first_line(exc)}") from exc
        finally:
            self._pool.putconn(conn, close=broken or bool(conn.closed))

    def close(self) -> None:
        """Close every connection and stop the threads; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pool.closeall()


def _first_line(exc: Exception) -> str:
    # libpq messages never contain the password, but keep them short for the log.
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
