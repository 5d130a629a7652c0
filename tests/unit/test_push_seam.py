"""The Postgres→Redis seam filter, alone and inside the hub's recovery path (no sockets, no services)."""

from __future__ import annotations

import orjson
import pytest

from push_server import protocol
from push_server.hub import Hub
from push_server.seam import SeamFilter
from push_server.writer import Outbox
from streaming_analytics.streams import CHANNEL_FIXED, StreamEntry
from tests.unit.push_fakes import Written

pytestmark = pytest.mark.unit


def test_seam_drops_repeats_and_older_panes_then_lets_newer_ones_through() -> None:
    seam = SeamFilter(until_ms=1000)
    assert seam.note("k1", 2) and seam.note("k2", 0)
    assert not seam.note("k1", 2) and not seam.note("k1", 1)  # a row read twice is sent once
    assert seam.note("k1", 3)  # ... unless it moved on meanwhile
    assert not seam.admit((500, 0), "k1", 3)
    assert not seam.admit((500, 1), "k1", 1)
    assert seam.admit((500, 2), "other", 0)
    assert seam.admit((600, 0), "k1", 4)  # newer than what Postgres sent: passes, stops watching k1
    assert seam.admit((600, 1), "k1", 0)  # from here on the stream's own order rules
    assert not seam.admit((700, 0), "k2", 0)
    assert seam.active and len(seam) == 1


def test_seam_switches_itself_off_after_its_time() -> None:
    seam = SeamFilter(until_ms=1000)
    seam.note("k", 5)
    assert not seam.admit((1000, 9), "k", 5)
    assert seam.admit((1001, 0), "k", 5)  # written after the replay's read plus the overlap
    assert not seam.active and len(seam) == 0


def _entry(key: str, pane: int) -> StreamEntry:
    return StreamEntry(key=key, pane=pane, timing="EARLY", final=False, data={"n": pane})


def test_hub_applies_the_seam_to_held_back_and_live_entries() -> None:
    hub = Hub(max_connections_per_user=5, max_pending=100)
    socket = Written()
    box = Outbox(100, socket)
    client = hub.register("c1", "alice", box, lambda _reason: None)
    hub.subscribe(client, CHANNEL_FIXED, None, recovering=True)
    hub.publish(CHANNEL_FIXED, "2000-0", _entry("a", 1))  # held back during the replay; repeats Postgres
    hub.publish(CHANNEL_FIXED, "2000-1", _entry("b", 0))
    seam = SeamFilter(until_ms=5000)
    seam.note("a", 1)
    seam.note("c", 4)
    hub.finish_recovery(client, CHANNEL_FIXED, protocol.parse_offset("1999-0"), seam=seam)
    hub.publish(CHANNEL_FIXED, "3000-0", _entry("c", 4))  # live repeat: dropped
    hub.publish(CHANNEL_FIXED, "3000-1", _entry("c", 5))
    hub.publish(CHANNEL_FIXED, "6000-0", _entry("a", 1))  # past the watch: the stream rules again

    docs = [orjson.loads(text) for text in socket.texts()]
    assert [(doc["key"], doc["pane"]) for doc in docs] == [("b", 0), ("c", 5), ("a", 1)]
    assert client.subscriptions[CHANNEL_FIXED].seam is None
