"""History from the pipeline's Postgres tables: recovery beyond Redis, and the REST endpoints.

Reads ``aggregates`` and ``alerts`` (streaming_analytics/db/migrations) and turns rows into the
same :class:`~streaming_analytics.streams.StreamEntry` the Redis stream carries, so a client cannot
tell a replayed row from a stream entry except by the ``source`` the server tells it.

Every statement is built with ``psycopg2.sql`` (the schema is an identifier, checked at start-up)
and takes its values as parameters. Paging is keyset (row-value comparison on the sort key), so a
page costs the same at any depth and rows inserted meanwhile never shift a page.

Recovery order is *change time*: ``aggregates.updated_at`` (when the sink last moved the row to a
newer pane) and ``alerts.inserted_at``, indexed by migration 0002. docs/push-protocol.md states
what that guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from psycopg2 import sql

from push_server.cursor import from_micros, micros
from push_server.pg import AsyncPgPool, Row
from push_server.rest_params import AggregateQuery, AlertQuery
from streaming_analytics.db.migrate import check_schema_name
from streaming_analytics.streams import (
    CHANNEL_ALERTS,
    CHANNEL_FIXED,
    CHANNEL_SLIDING,
    StreamEntry,
    pane_revision,
    window_key,
)

AGGREGATE_COLUMNS: Final = (
    "kind", "dimension", "dimension_key", "window_start", "window_end", "pane_index", "timing", "is_final",
    "count", "sum_amount", "mean_amount", "min_amount", "max_amount", "p50", "p95", "p99", "distinct_users",
    "emitted_at", "updated_at",
)
ALERT_COLUMNS: Final = ("alert_id", "event_id", "user_id", "score", "model_version", "event_time",
                        "emitted_at", "inserted_at")
KIND_OF_CHANNEL: Final = {CHANNEL_FIXED: "fixed", CHANNEL_SLIDING: "sliding"}


def to_ms(moment: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (floor, like Redis ids)."""
    return micros(moment) // 1000


def aggregate_payload(row: Row) -> dict[str, Any]:
    """An ``aggregates`` row as the stream contract's aggregate payload."""
    r = dict(zip(AGGREGATE_COLUMNS, row, strict=True))
    return {
        "kind": r["kind"], "dimension": r["dimension"], "key": r["dimension_key"],
        "window_start_ms": to_ms(r["window_start"]), "window_end_ms": to_ms(r["window_end"]),
        "pane_index": r["pane_index"], "timing": r["timing"], "is_final": r["is_final"],
        "count": r["count"], "sum_amount": r["sum_amount"], "mean_amount": r["mean_amount"],
        "min_amount": r["min_amount"], "max_amount": r["max_amount"], "p50": r["p50"], "p95": r["p95"],
        "p99": r["p99"], "distinct_users": r["distinct_users"], "emitted_at_ms": to_ms(r["emitted_at"]),
    }


def aggregate_entry(row: Row) -> StreamEntry:
    """An ``aggregates`` row as the stream entry the pipeline wrote for that pane."""
    data = aggregate_payload(row)
    key = window_key(data["kind"], data["dimension"], data["key"], data["window_start_ms"],
                     data["window_end_ms"])
    return StreamEntry(key=key, pane=pane_revision(data["emitted_at_ms"], data["pane_index"]),
                       timing=data["timing"], final=data["is_final"], data=data)


def alert_payload(row: Row) -> dict[str, Any]:
    """An ``alerts`` row as the stream contract's alert payload."""
    r = dict(zip(ALERT_COLUMNS, row, strict=True))
    return {"alert_id": r["alert_id"], "event_id": r["event_id"], "user_id": r["user_id"],
            "score": r["score"], "model_version": r["model_version"],
            "event_time_ms": to_ms(r["event_time"]), "emitted_at_ms": to_ms(r["emitted_at"])}


def alert_entry(row: Row) -> StreamEntry:
    """An ``alerts`` row as the stream entry the pipeline wrote for it."""
    data = alert_payload(row)
    return StreamEntry(key=f"alert|{data['event_id']}", pane=0, timing="ON_TIME", final=True, data=data)


@dataclass(frozen=True, slots=True)
class Change:
    """One row changed in a recovery window, with the keyset position after it."""

    entry: StreamEntry
    position: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """One REST page: items in the contract's payload shape, plus the keyset of the last one."""

    items: list[dict[str, Any]]
    last_position: tuple[int | str, ...] | None
    more: bool


class PostgresHistory:
    """Queries of the push server against one schema."""

    def __init__(self, pool: AsyncPgPool, *, schema: str) -> None:
        self._pool = pool
        self._schema = check_schema_name(schema)

    def _table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self._schema, name)

    # --- recovery --------------------------------------------------------------------------------
    async def changes(self, channel: str, *, lo: datetime, hi: datetime | None,
                      after: tuple[Any, ...] | None, limit: int) -> list[Change]:
        """Rows of ``channel`` whose change time is in ``[lo, hi)``, oldest change first.

        ``after`` is the previous page's last position (exclusive).
        """
        if channel == CHANNEL_ALERTS:
            return await self._alert_changes(lo, hi, after, limit)
        kind = KIND_OF_CHANNEL.get(channel)
        if kind is None:
            raise ValueError(f"no history for channel {channel!r}")
        where: list[sql.Composable] = [sql.SQL("kind = %s"), sql.SQL("updated_at >= %s")]
        params: list[Any] = [kind, lo]
        if hi is not None:
            where.append(sql.SQL("updated_at < %s"))
            params.append(hi)
        sort = ("updated_at", "dimension", "dimension_key", "window_start", "window_end")
        if after is not None:
            where.append(_row_compare(sort, ">"))
            params.extend(after)
        query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {order} LIMIT %s").format(
            cols=_columns(AGGREGATE_COLUMNS), table=self._table("aggregates"),
            where=sql.SQL(" AND ").join(where), order=_order(sort, "ASC"))
        rows = await self._pool.fetch(query, [*params, limit])
        return [Change(aggregate_entry(row), (row[18], row[1], row[2], row[3], row[4])) for row in rows]

    async def _alert_changes(self, lo: datetime, hi: datetime | None, after: tuple[Any, ...] | None,
                             limit: int) -> list[Change]:
        where: list[sql.Composable] = [sql.SQL("inserted_at >= %s")]
        params: list[Any] = [lo]
        if hi is not None:
            where.append(sql.SQL("inserted_at < %s"))
            params.append(hi)
        sort = ("inserted_at", "alert_id")
        if after is not None:
            where.append(_row_compare(sort, ">"))
            params.extend(after)
        query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {order} LIMIT %s").format(
            cols=_columns(ALERT_COLUMNS), table=self._table("alerts"),
            where=sql.SQL(" AND ").join(where), order=_order(sort, "ASC"))
        rows = await self._pool.fetch(query, [*params, limit])
        return [Change(alert_entry(row), (row[7], row[0])) for row in rows]

    # --- REST ------------------------------------------------------------------------------------
    async def aggregates_page(self, q: AggregateQuery) -> Page:
        """One page of windows, newest window start first."""
        where: list[sql.Composable] = [sql.SQL("kind = %s")]
        params: list[Any] = [q.kind]
        for column, value in (("dimension", q.dimension), ("dimension_key", q.key)):
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        _time_range(where, params, "window_start", q.start, q.end)
        sort = ("window_start", "dimension", "dimension_key", "window_end")
        if q.after is not None:
            where.append(_row_compare(sort, "<"))
            params.extend(q.after)
        query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {order} LIMIT %s").format(
            cols=_columns(AGGREGATE_COLUMNS), table=self._table("aggregates"),
            where=sql.SQL(" AND ").join(where), order=_order(sort, "DESC"))
        rows = await self._pool.fetch(query, [*params, q.limit + 1])
        page = rows[: q.limit]
        items = [{**aggregate_payload(r), "window_key": aggregate_entry(r).key, "updated_at_ms": to_ms(r[18])}
                 for r in page]
        last = page[-1] if page else None
        position = None if last is None else (micros(last[3]), last[1], last[2], micros(last[4]))
        return Page(items=items, last_position=position, more=len(rows) > q.limit)

    async def alerts_page(self, q: AlertQuery) -> Page:
        """One page of alerts, newest event time first."""
        where: list[sql.Composable] = []
        params: list[Any] = []
        if q.user_id is not None:
            where.append(sql.SQL("user_id = %s"))
            params.append(q.user_id)
        if q.min_score is not None:
            where.append(sql.SQL("score >= %s"))
            params.append(q.min_score)
        _time_range(where, params, "event_time", q.start, q.end)
        sort = ("event_time", "alert_id")
        if q.after is not None:
            where.append(_row_compare(sort, "<"))
            params.extend(q.after)
        condition = sql.SQL(" AND ").join(where) if where else sql.SQL("TRUE")
        query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {order} LIMIT %s").format(
            cols=_columns(ALERT_COLUMNS), table=self._table("alerts"), where=condition,
            order=_order(sort, "DESC"))
        rows = await self._pool.fetch(query, [*params, q.limit + 1])
        page = rows[: q.limit]
        items = [{**alert_payload(r), "inserted_at_ms": to_ms(r[7])} for r in page]
        last = page[-1] if page else None
        position = None if last is None else (micros(last[5]), last[0])
        return Page(items=items, last_position=position, more=len(rows) > q.limit)


def ms_floor(ms: int) -> datetime:
    """The first instant of epoch millisecond ``ms``."""
    return from_micros(ms * 1000)


def ms_after(ms: int) -> datetime:
    """The first instant after epoch millisecond ``ms`` (exclusive bound covering all of ``ms``)."""
    return from_micros(ms * 1000) + timedelta(milliseconds=1)


def _columns(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _order(names: Sequence[str], direction: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{} " + direction).format(sql.Identifier(n)) for n in names)


def _row_compare(names: Sequence[str], op: str) -> sql.Composable:
    return sql.SQL("({}) " + op + " ({})").format(
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.SQL(", ").join(sql.Placeholder() for _ in names))


def _time_range(where: list[sql.Composable], params: list[Any], column: str, start: datetime | None,
                end: datetime | None) -> None:
    if start is not None:
        where.append(sql.SQL("{} >= %s").format(sql.Identifier(column)))
        params.append(start)
    if end is not None:
        where.append(sql.SQL("{} < %s").format(sql.Identifier(column)))
        params.append(end)
