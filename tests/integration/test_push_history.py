"""History beyond Redis, end to end: a real push server, real Redis and Postgres, real clients.

* Recovery fallback: the client's ``since`` is trimmed from the Redis stream (XTRIM), the gap's rows
  are in Postgres (a migrated schema of this module's own) → the client gets the gap from Postgres,
  then the held Redis range and live entries, with no gap and no duplicate at the seam.
* REST: bearer auth and channel grants, keyset paging with opaque cursors, JSON 400s.

Run: pytest tests/integration/test_push_history.py
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg2
import pytest
import redis
from psycopg2 import sql
from websockets.asyncio.client import connect

from push_server.devtokens import claims_for, hs256
from streaming_analytics.db.migrate import migrate
from streaming_analytics.settings import Settings
from streaming_analytics.streams import (
    CHANNEL_ALERTS,
    CHANNEL_FIXED,
    StreamEntry,
    pane_revision,
    stream_key,
    window_key,
)
from tests.support.push_process import PushServerProcess, recv_json, send_json, xadd

pytestmark = pytest.mark.integration

SECRET = "history-secret-of-sufficient-length-4242"
OVERLAP_MS = 500
PHASE_S = 0.8  # > OVERLAP_MS: phases of the timeline are clearly apart
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Env:
    def __init__(self, server: PushServerProcess, redis_client: redis.Redis, prefix: str, schema: str,
                 dsn: str) -> None:
        self.server = server
        self.redis = redis_client
        self.prefix = prefix
        self.schema = schema
        self.dsn = dsn
        self.settings = Settings.from_env(server.env)

    def token(self, sub: str = "hist", channels: tuple[str, ...] = ("*",), **kw: Any) -> str:
        return hs256(self.settings, claims_for(self.settings, sub=sub, channels=channels, **kw))

    def publish(self, channel: str, entries: list[StreamEntry]) -> list[str]:
        return xadd(self.redis, self.prefix, channel, entries)

    def trim_all(self, channel: str) -> None:
        self.redis.xtrim(stream_key(self.prefix, channel), maxlen=0, approximate=False)

    def execute(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                cur.executemany(statement, rows)
        finally:
            conn.close()

    def get(self, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.server.http + path, headers=headers)  # noqa: S310 - local
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())


@pytest.fixture(scope="module")
def env(redis_url: str) -> Iterator[Env]:
    settings = Settings.from_env()
    schema = f"t_push_hist_{uuid.uuid4().hex[:8]}"
    prefix = f"test-push-hist-{uuid.uuid4().hex[:8]}:"
    migrate(settings.postgres_dsn, schema)
    client = redis.Redis.from_url(redis_url)
    server = PushServerProcess({
        "SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix, "SA_PUSH_BROKER": "redis",
        "SA_JWT_SECRET": SECRET, "SA_PUSH_HISTORY": "postgres", "SA_PUSH_HISTORY_SCHEMA": schema,
        "SA_PUSH_HISTORY_OVERLAP_MS": str(OVERLAP_MS), "SA_POSTGRES_DSN": settings.postgres_dsn,
    })
    try:
        with server:
            yield Env(server, client, prefix, schema, settings.postgres_dsn)
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
        conn = psycopg2.connect(settings.postgres_dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        finally:
            conn.close()


# --- data as the pipeline writes it ------------------------------------------------------------------

def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def id_ms(offset: str) -> int:
    return int(offset.split("-", maxsplit=1)[0])


def pane(dimension: str, key: str, n: int, start_ms: int) -> StreamEntry:
    data = {"kind": "fixed", "dimension": dimension, "key": key, "window_start_ms": start_ms,
            "window_end_ms": start_ms + 60_000, "pane_index": n, "timing": "EARLY", "is_final": False,
            "count": 10 * (n + 1), "sum_amount": 1.5, "mean_amount": 1.5, "min_amount": 1.0,
            "max_amount": 2.0, "p50": 1.5, "p95": 2.0, "p99": 2.0, "distinct_users": 3,
            "emitted_at_ms": start_ms + 1000 + n}
    key = window_key("fixed", dimension, key, start_ms, start_ms + 60_000)
    # As the Redis sink writes it: the entry's pane is the pane's revision.
    return StreamEntry(key, pane_revision(data["emitted_at_ms"], n), "EARLY", False, data)


AGG_INSERT = (
    "INSERT INTO aggregates (kind, dimension, dimension_key, window_start, window_end, pane_index, timing, "
    "is_final, count, sum_amount, mean_amount, min_amount, max_amount, p50, p95, p99, distinct_users, "
    "emitted_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s, %s) ON CONFLICT (kind, dimension, dimension_key, window_start, window_end) DO UPDATE SET "
    "pane_index = EXCLUDED.pane_index, count = EXCLUDED.count, updated_at = EXCLUDED.updated_at"
)


def agg_row(entry: StreamEntry, updated_ms: int) -> tuple[Any, ...]:
    d = entry.data
    return ("fixed", d["dimension"], d["key"], at_ms(d["window_start_ms"]), at_ms(d["window_end_ms"]),
            d["pane_index"], d["timing"], d["is_final"], d["count"], d["sum_amount"], d["mean_amount"],
            d["min_amount"], d["max_amount"], d["p50"], d["p95"], d["p99"], d["distinct_users"],
            at_ms(d["emitted_at_ms"]), at_ms(updated_ms))


def alert(n: int, user: str = "u1", score: float = 0.9, event_ms: int = 1_767_225_600_000) -> StreamEntry:
    data = {"alert_id": f"al{n}", "event_id": f"ev{n}", "user_id": user, "score": score,
            "model_version": "m1", "event_time_ms": event_ms + n, "emitted_at_ms": event_ms + n + 5}
    return StreamEntry(f"alert|ev{n}", 0, "ON_TIME", True, data)


ALERT_INSERT = ("INSERT INTO alerts (alert_id, event_id, user_id, score, model_version, event_time, "
                "emitted_at, inserted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (alert_id) DO NOTHING")


def alert_row(entry: StreamEntry, inserted_ms: int) -> tuple[Any, ...]:
    d = entry.data
    return (d["alert_id"], d["event_id"], d["user_id"], d["score"], d["model_version"],
            at_ms(d["event_time_ms"]), at_ms(d["emitted_at_ms"]), at_ms(inserted_ms))


# --- WebSocket helpers -----------------------------------------------------------------------------

async def recovering_subscribe(env: Env, channel: str, since: str) -> tuple[Any, dict[str, Any]]:
    ws = await connect(f"{env.server.ws}?token={env.token()}")
    assert (await recv_json(ws))["type"] == "connected"
    await send_json(ws, {"type": "subscribe", "id": 5, "channel": channel, "since": since})
    reply = await recv_json(ws)
    assert reply["type"] == "subscribed", reply
    return ws, reply


async def pubs(ws: Any, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        doc = await recv_json(ws, 5.0)
        if doc["type"] == "pub":
            out.append(doc)
    return out


async def pubs_through(ws: Any, offset: str) -> list[dict[str, Any]]:
    """Every pub up to and including the one at ``offset`` (an entry written last): a stream is
    delivered in order, so whatever else the server sends before it — a duplicate, an entry it
    should have dropped — is in the list, with no wait for a silence that proves nothing."""
    out: list[dict[str, Any]] = []
    while not out or out[-1]["offset"] != offset:
        doc = await recv_json(ws, 5.0)
        if doc["type"] == "pub":
            out.append(doc)
    return out


# --- recovery fallback -------------------------------------------------------------------------------

def test_trimmed_aggregates_are_recovered_from_postgres_then_redis_then_live(env: Env) -> None:
    """Timeline (each phase PHASE_S apart, rows stamped like the sink with the entry's time):

    before since: kA p0 · since: kM p0 · gap (trimmed): kB p0, kC p0, kB p1 ·
    held after XTRIM: kC p0 (late repeat), kE p0, kB p2 · live: kE p0 (repeat), kF p0, kB p3
    """
    t0 = 1_767_225_600_000
    ka, km, kb, kc, ke, kf = (pane("country", k, 0, t0) for k in ("A", "M", "B", "C", "E", "F"))
    (id_a,) = env.publish(CHANNEL_FIXED, [ka])
    time.sleep(PHASE_S)
    (since,) = env.publish(CHANNEL_FIXED, [km])
    time.sleep(PHASE_S)
    id_b0, id_c, id_b1 = env.publish(CHANNEL_FIXED, [kb, kc, pane("country", "B", 1, t0)])
    time.sleep(PHASE_S)
    env.trim_all(CHANNEL_FIXED)
    _id_c_again, id_e, id_b2 = env.publish(CHANNEL_FIXED, [kc, ke, pane("country", "B", 2, t0)])
    # The table holds the newest pane per window, stamped when the sink wrote it.
    env.execute(AGG_INSERT, [agg_row(ka, id_ms(id_a)), agg_row(km, id_ms(since)), agg_row(kc, id_ms(id_c)),
                             agg_row(pane("country", "B", 2, t0), id_ms(id_b2)), agg_row(ke, id_ms(id_e))])

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        ws, reply = await recovering_subscribe(env, CHANNEL_FIXED, since)
        async with ws:
            replayed = await pubs(ws, 4)
            # Live at once, within the seam's watch: the repeat of kE must still be dropped.
            live_ids = env.publish(CHANNEL_FIXED, [ke, kf, pane("country", "B", 3, t0)])
            live = await pubs_through(ws, live_ids[-1])
        return reply, replayed, live

    reply, replayed, live = asyncio.run(scenario())
    assert reply["recovered"] is True and reply["source"] == "postgres+redis" and reply["offset"] == since
    got = [(p["data"]["key"], p["data"]["pane_index"], p.get("source", "redis")) for p in replayed]
    assert all(p["pane"] == pane_revision(p["data"]["emitted_at_ms"], p["data"]["pane_index"])
               for p in replayed)
    # kA changed before ms(since) - overlap: not replayed. kM changed at since: inside the overlap, repeated
    # once at the pane the client had. B's gap panes are superseded by the table's p2; the held Redis
    # entries (kC repeat, kE, kB p2) repeat what Postgres sent and are dropped at the seam.
    expected_pg = sorted([(id_ms(since), "M", 0), (id_ms(id_c), "C", 0), (id_ms(id_e), "E", 0),
                          (id_ms(id_b2), "B", 2)])
    assert got == [(k, p, "postgres") for _, k, p in expected_pg]
    assert all(p["offset"] == since for p in replayed)
    assert id_b0 < id_b1  # the gap really held B's earlier panes
    assert [(p["data"]["key"], p["data"]["pane_index"], p.get("source")) for p in live] == [
        ("F", 0, None), ("B", 3, None)]
    keys_panes = [(p["key"], p["pane"]) for p in replayed + live]
    assert len(set(keys_panes)) == len(keys_panes)


def test_trimmed_alerts_are_recovered_from_postgres_without_gap_or_duplicate(env: Env) -> None:
    before, at_since = alert(100), alert(101)
    gap = [alert(102), alert(103)]
    held = [alert(103), alert(104)]  # 103 again: the Redis sink's retry after the trim point
    env.publish(CHANNEL_ALERTS, [before])
    rows = [alert_row(before, int(time.time() * 1000))]
    time.sleep(PHASE_S)
    (since,) = env.publish(CHANNEL_ALERTS, [at_since])
    time.sleep(PHASE_S)
    gap_ids = env.publish(CHANNEL_ALERTS, gap)
    time.sleep(PHASE_S)
    env.trim_all(CHANNEL_ALERTS)
    held_ids = env.publish(CHANNEL_ALERTS, held)
    rows += [alert_row(at_since, id_ms(since)), alert_row(gap[0], id_ms(gap_ids[0])),
             alert_row(gap[1], id_ms(gap_ids[1])), alert_row(held[1], id_ms(held_ids[1]))]
    env.execute(ALERT_INSERT, rows)

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        ws, reply = await recovering_subscribe(env, CHANNEL_ALERTS, since)
        async with ws:
            got = await pubs(ws, 4)  # from Postgres; then one live entry, and nothing in between
            (live_id,) = env.publish(CHANNEL_ALERTS, [alert(105)])
            got += await pubs_through(ws, live_id)
        return reply, got

    reply, got = asyncio.run(scenario())
    assert reply["recovered"] is True and reply["source"] == "postgres+redis"
    ids = [p["data"]["alert_id"] for p in got]
    # al101 is at `since` (inside the overlap, documented repeat); al100 is before it: never sent.
    assert ids == ["al101", "al102", "al103", "al104", "al105"]
    assert [p.get("source") for p in got] == ["postgres"] * 4 + [None]


def test_postgres_unavailable_degrades_to_recovered_false(redis_url: str) -> None:
    prefix = f"test-push-hist-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    server = PushServerProcess({
        "SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix, "SA_JWT_SECRET": SECRET,
        "SA_PUSH_HISTORY": "postgres", "SA_PUSH_HISTORY_SCHEMA": f"t_missing_{uuid.uuid4().hex[:8]}",
    })
    try:
        with server:
            env = Env(server, client, prefix, "unused", "")
            ids = env.publish(CHANNEL_ALERTS, [alert(1), alert(2)])
            env.trim_all(CHANNEL_ALERTS)
            (last_id,) = env.publish(CHANNEL_ALERTS, [alert(3)])

            async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
                ws, reply = await recovering_subscribe(env, CHANNEL_ALERTS, ids[0])
                async with ws:
                    return reply, await pubs_through(ws, last_id)

            reply, got = asyncio.run(scenario())
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
    assert reply["recovered"] is False and reply["source"] == "redis"
    assert [p["data"]["alert_id"] for p in got] == ["al3"]


# --- REST -------------------------------------------------------------------------------------------

def _seed_rest(env: Env) -> tuple[list[tuple[str, int]], int]:
    """Eleven windows of dimension 'rest' (some sharing a start) and alerts of two users."""
    t0 = 1_700_000_000_000
    entries = [pane("rest", key, 0, t0 + minute * 60_000)
               for minute in range(4) for key in ("DE", "FR", "IT") if not (minute == 3 and key == "IT")]
    env.execute(AGG_INSERT, [agg_row(e, t0) for e in entries])
    env.execute(ALERT_INSERT, [alert_row(alert(200 + n, user=f"user{n % 2}", score=n / 10, event_ms=t0), t0)
                               for n in range(10)])
    expected = sorted(((e.data["key"], e.data["window_start_ms"]) for e in entries),
                      key=lambda kv: (kv[1], kv[0]), reverse=True)
    return expected, t0


def test_rest_aggregates_keyset_paging_covers_everything_once(env: Env) -> None:
    expected, _ = _seed_rest(env)
    token = env.token(channels=("aggregates.fixed",))
    seen: list[tuple[str, int]] = []
    path = "/api/v1/history/aggregates?kind=fixed&dimension=rest&limit=4"
    cursor: str | None = None
    pages = 0
    while True:
        status, body = env.get(path + (f"&cursor={cursor}" if cursor else ""), token)
        assert status == 200, body
        pages += 1
        seen += [(item["key"], item["window_start_ms"]) for item in body["items"]]
        assert all(item["window_key"].startswith("fixed|rest|") for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 3
    status, body = env.get("/api/v1/history/aggregates?kind=fixed&dimension=rest&key=FR", token)
    assert status == 200 and [i["key"] for i in body["items"]] == ["FR"] * 4
    first_start = expected[-1][1]
    status, body = env.get(f"/api/v1/history/aggregates?kind=fixed&dimension=rest&from={first_start}"
                           f"&to={first_start + 60_000}", token)
    assert status == 200 and sorted(i["key"] for i in body["items"]) == ["DE", "FR", "IT"]


def test_rest_alerts_filters_and_paging(env: Env) -> None:
    _seed_rest(env)
    token = env.token(channels=("alerts",))
    status, body = env.get("/api/v1/history/alerts?user_id=user1&min_score=0.5&limit=2", token)
    assert status == 200 and [i["alert_id"] for i in body["items"]] == ["al209", "al207"]
    status, body = env.get(f"/api/v1/history/alerts?user_id=user1&min_score=0.5&limit=2&cursor="
                           f"{body['next_cursor']}", token)
    assert status == 200 and [i["alert_id"] for i in body["items"]] == ["al205"]
    assert body["next_cursor"] is None


@pytest.mark.parametrize(("path", "param"), [
    ("/api/v1/history/aggregates", "kind"),
    ("/api/v1/history/aggregates?kind=hourly", "kind"),
    ("/api/v1/history/aggregates?kind=fixed&limit=0", "limit"),
    ("/api/v1/history/aggregates?kind=fixed&limit=1001", "limit"),
    ("/api/v1/history/aggregates?kind=fixed&key=DE", "key"),
    ("/api/v1/history/aggregates?kind=fixed&dimension=", "dimension"),
    ("/api/v1/history/aggregates?kind=fixed&from=2&to=1", "from"),
    ("/api/v1/history/aggregates?kind=fixed&from=yesterday", "from"),
    ("/api/v1/history/aggregates?kind=fixed&dimesion=country", "dimesion"),
    ("/api/v1/history/aggregates?kind=fixed&kind=sliding", "kind"),
    ("/api/v1/history/aggregates?kind=fixed&cursor=not-a-cursor", "cursor"),
    ("/api/v1/history/alerts?min_score=2", "min_score"),
    ("/api/v1/history/alerts?user_id=x%27%3B%20DROP%20TABLE%20alerts%3B--&cursor=e30", "cursor"),
])
def test_rest_bad_params_are_400_with_a_json_error(env: Env, path: str, param: str) -> None:
    status, body = env.get(path, env.token())
    assert status == 400
    assert body["error"]["code"] == "bad_request" and body["error"]["param"] == param


def test_rest_cursor_of_another_query_is_refused(env: Env) -> None:
    _seed_rest(env)
    token = env.token()
    status, body = env.get("/api/v1/history/aggregates?kind=fixed&dimension=rest&limit=1", token)
    assert status == 200 and body["next_cursor"]
    other = f"/api/v1/history/aggregates?kind=fixed&dimension=other&cursor={body['next_cursor']}"
    status, body = env.get(other, token)
    assert status == 400 and "another query" in body["error"]["message"]


def test_rest_auth(env: Env) -> None:
    path = "/api/v1/history/aggregates?kind=fixed"
    assert env.get(path, None)[0] == 401
    status, body = env.get(path, hs256(env.settings, claims_for(env.settings, sub="x", channels=["*"]),
                                       secret="wrong-secret-of-sufficient-length-4242"))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    expired = env.token(ttl_s=-60)
    assert env.get(path, expired)[0] == 401
    status, body = env.get(path, env.token(channels=("alerts",)))
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert env.get("/api/v1/history/alerts", env.token(channels=("aggregates.*",)))[0] == 403
    assert env.get("/api/v1/history/aggregates?kind=sliding", env.token(channels=("aggregates.*",)))[0] == 200
