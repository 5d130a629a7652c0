"""The live dashboard in a real headless Chromium (Debian's package, driven over CDP): it logs in
with a token, subscribes, and its charts and alert feed update as the pipeline writes entries.

Run: pytest -m browser tests/integration/test_push_dashboard.py
Set PUSH_DASHBOARD_SCREENSHOT=docs/img/dashboard.png to refresh the screenshot in the docs.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import Settings
from streaming_analytics.streams import (
    CHANNEL_ALERTS,
    CHANNEL_FIXED,
    CHANNEL_SLIDING,
    StreamEntry,
    window_key,
)
from tests.support.cdp import Chromium
from tests.support.push_process import PushServerProcess, xadd

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SECRET = "dashboard-secret-of-sufficient-length-4242"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def server(redis_url: str) -> Iterator[tuple[PushServerProcess, redis.Redis, str]]:
    prefix = f"test-push-dash-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    process = PushServerProcess({"SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix,
                                 "SA_JWT_SECRET": SECRET, "SA_PUSH_HISTORY": "none"})
    try:
        with process:
            yield process, client, prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def aggregate(kind: str, key: str, start_ms: int, pane: int, count: int) -> StreamEntry:
    end_ms = start_ms + 60_000
    data = {"kind": kind, "dimension": "country", "key": key, "window_start_ms": start_ms,
            "window_end_ms": end_ms, "pane_index": pane, "timing": "EARLY", "is_final": False,
            "count": count, "sum_amount": count * 12.5, "mean_amount": 12.5, "min_amount": 1.0,
            "max_amount": 99.0, "p50": 10.0, "p95": 60.0, "p99": 95.0, "distinct_users": count // 2,
            "emitted_at_ms": int(time.time() * 1000)}
    return StreamEntry(window_key(kind, "country", key, start_ms, end_ms), pane, "EARLY", False, data)


def alert(n: int) -> StreamEntry:
    now = int(time.time() * 1000)
    data = {"alert_id": f"alert-{n}", "event_id": f"evt-{n}", "user_id": f"user-{n % 7}",
            "score": 0.9 + n / 1000, "model_version": "fraud-v3", "event_time_ms": now, "emitted_at_ms": now}
    return StreamEntry(f"alert|evt-{n}", 0, "ON_TIME", True, data)


def test_dashboard_shows_live_aggregates_and_alerts(server: tuple[PushServerProcess, redis.Redis, str],
                                                    tmp_path: Path) -> None:
    process, client, prefix = server
    settings = Settings.from_env(process.env)
    token = hs256(settings, claims_for(settings, sub="dashboard", channels=["*"]))
    minute = 60_000
    base = (int(time.time() * 1000) // minute - 12) * minute

    async def scenario() -> dict[str, Any]:
        async with Chromium() as browser:
            await browser.goto(f"{process.http}/dashboard/#token={token}")
            await browser.wait_for("document.getElementById('status').dataset.state === 'live'")
            # All three subscriptions are registered before anything is written.
            await browser.wait_for("document.body.dataset.subscriptions === '3'")
            for i in range(12):
                start = base + i * minute
                xadd(client, prefix, CHANNEL_FIXED, [aggregate("fixed", key, start, 0, 20 + 7 * i + 11 * k)
                                                     for k, key in enumerate(("DE", "FR", "US"))])
                # a later pane of the same window replaces the earlier one, never adds to it
                xadd(client, prefix, CHANNEL_FIXED, [aggregate("fixed", "DE", start, 1, 30 + 7 * i)])
                xadd(client, prefix, CHANNEL_SLIDING, [aggregate("sliding", key, start, 0, 40 + 5 * i + 9 * k)
                                                       for k, key in enumerate(("DE", "FR"))])
            xadd(client, prefix, CHANNEL_ALERTS, [alert(n) for n in range(6)])
            await browser.wait_for("document.getElementById('chart-fixed').dataset.points === '12'")
            await browser.wait_for("document.getElementById('chart-sliding').dataset.points === '12'")
            await browser.wait_for("document.querySelectorAll('#alert-feed li').length === 6")
            # The last redraw is on screen once the browser has painted two more frames.
            await browser.evaluate("new Promise(done => requestAnimationFrame("
                                   "() => requestAnimationFrame(() => done(true))))")
            state = await browser.evaluate("""({
                fixedSeries: document.getElementById('chart-fixed').dataset.series,
                slidingSeries: document.getElementById('chart-sliding').dataset.series,
                fixedCount: document.getElementById('fixed-count').textContent,
                alertsCount: document.getElementById('alerts-count').textContent,
                newestAlert: document.querySelector('#alert-feed li').dataset.alertId,
                canvases: document.querySelectorAll('.chart canvas').length,
                legend: [...document.querySelectorAll('#chart-fixed .u-legend .u-label')]
                    .map(e => e.textContent),
            })""")
            shot = tmp_path / "dashboard.png"
            png = await browser.screenshot(shot)
            target = os.environ.get("PUSH_DASHBOARD_SCREENSHOT")
            if target:
                Path(target).write_bytes(png)
            state["png"] = png[:8]
            state["console"] = list(browser.console)
            return state

    state = asyncio.run(scenario())
    assert state["png"] == PNG_MAGIC
    assert state["canvases"] == 2
    assert state["fixedSeries"] == "3" and state["slidingSeries"] == "2"
    assert state["fixedCount"] == "48"  # 36 first panes + 12 newer panes; stale panes would not count
    assert state["alertsCount"] == "6" and state["newestAlert"] == "alert-5"
    assert {"DE", "FR", "US"} <= set(state["legend"])
    assert not [line for line in state["console"] if line.startswith("exception")]
