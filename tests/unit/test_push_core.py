"""Close codes, the bounded outbox, the broker factory and the recovery completeness rule."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import pytest

from push_server import disconnect
from push_server.broker import (
    BrokerUnavailableError,
    MemoryBroker,
    RedisStreamBroker,
    covers_rule,
    make_broker,
)
from push_server.disconnect import Disconnect
from push_server.frames import text_frame
from push_server.writer import Outbox, OutboxClosedError, SendStats
from streaming_analytics.settings import ConfigError, Settings
from streaming_analytics.streams import CHANNEL_ALERTS, StreamEntry
from tests.unit.push_fakes import Written

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env({})


# --- close codes -------------------------------------------------------------------------------

def test_close_codes_are_unique_and_their_range_encodes_reconnect_advice() -> None:
    assert len({d.code for d in disconnect.ALL}) == len(disconnect.ALL)
    for d in disconnect.ALL:
        assert d.reconnect == (d.code < 4500) == disconnect.reconnect_advised(d.code)
    assert disconnect.reconnect_advised(1006)


@pytest.mark.parametrize(("code", "reconnect"), [(3999, True), (4500, True), (4001, False)])
def test_inconsistent_close_codes_cannot_be_declared(code: int, reconnect: bool) -> None:
    with pytest.raises(ValueError, match="close code"):
        Disconnect(code, "x", reconnect=reconnect)


# --- outbox ------------------------------------------------------------------------------------

def test_outbox_writes_straight_through_while_the_socket_keeps_up() -> None:
    socket = Written()
    box = Outbox(2, socket)
    assert box.offer("a") and box.offer("b") and box.offer("c")  # never queued: no bound applies
    assert len(box) == 0 and socket.texts() == ["a", "b", "c"]
    wire = text_frame("pre-built")
    assert box.offer("ignored when wire bytes come along", wire=wire)
    assert socket == [wire] and socket[0] is wire  # the very bytes, not a copy


def test_outbox_bounds_the_backlog_of_a_backed_up_socket_and_flushes_it_in_order() -> None:
    socket = Written()
    box = Outbox(2, socket)
    box.pause()
    assert box.offer("a") and box.offer("b")
    assert not box.offer("c")  # full: the hub disconnects this client
    assert box.offer("reply", force=True)  # replies never cause a disconnect
    assert len(box) == 3 and socket == []
    box.resume()
    assert socket.texts() == ["a", "b", "reply"] and len(box) == 0
    assert box.offer("d") and socket.texts() == ["d"]  # straight through again


def test_outbox_keeps_order_when_the_socket_backs_up_again_mid_flush() -> None:
    socket = Written()

    def write(data: bytes) -> None:
        socket(data)
        if len(socket) == 2:
            box.pause()  # the transport's buffer filled up again

    box = Outbox(10, write)
    box.pause()
    for name in "abcd":
        box.offer(name)
    box.resume()
    assert len(box) == 2 and box.offer("e")
    box.resume()
    assert socket.texts() == ["a", "b", "c", "d", "e"]


def test_outbox_close_flushes_the_backlog_unless_discarded() -> None:
    socket = Written()
    box = Outbox(4, socket)
    box.pause()
    box.offer("a")
    box.close()
    assert not box.offer("late") and len(box) == 1
    box.resume()
    assert socket.texts() == ["a"] and len(box) == 0
    dropped = Outbox(4, socket)
    dropped.pause()
    dropped.offer("b")
    dropped.close(discard=True)
    dropped.resume()
    assert socket.texts() == []


def test_outbox_counts_frames_and_observes_flush_latency() -> None:
    seen: list[float] = []
    stats = SendStats(observe_latency=seen.append)
    box = Outbox(4, Written(), stats)
    box.offer("a")
    box.pause()
    box.offer("b")
    box.offer("c")
    assert stats.frames == 1 and seen == []
    box.resume()
    assert stats.frames == 3 and len(seen) == 1 and seen[0] >= 0


def test_outbox_put_waits_for_room_and_times_out_on_a_stalled_reader() -> None:
    async def scenario() -> None:
        socket = Written()
        box = Outbox(2, socket)
        box.pause()
        box.offer("a")
        box.offer("b")
        waiter = asyncio.create_task(box.put("c", timeout=1.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        box.resume()
        await waiter
        assert socket.texts() == ["a", "b", "c"]
        box.pause()
        box.offer("d")
        box.offer("e")
        with pytest.raises(TimeoutError):
            await box.put("f", timeout=0.05)
        with pytest.raises(TimeoutError):
            await box.put("g", timeout=0.05, limit=1)
        box.close()
        with pytest.raises(OutboxClosedError):
            await box.put("h", timeout=1.0)

    asyncio.run(scenario())


# --- brokers -----------------------------------------------------------------------------------

def test_backend_is_chosen_in_one_place() -> None:
    assert isinstance(make_broker(replace(SETTINGS, push_broker="memory")), MemoryBroker)
    assert isinstance(make_broker(replace(SETTINGS, push_broker="redis")), RedisStreamBroker)
    with pytest.raises(ConfigError, match="kafka"):
        make_broker(replace(SETTINGS, push_broker="kafka"))


def test_covers_rule() -> None:
    assert covers_rule((0, 0), exists=False, first=None, last_generated=(0, 0), removed_any=False)
    assert covers_rule((0, 0), exists=True, first=(5, 0), last_generated=(9, 0), removed_any=False)
    assert not covers_rule((0, 0), exists=True, first=(5, 0), last_generated=(9, 0), removed_any=True)
    assert covers_rule((5, 0), exists=True, first=(5, 0), last_generated=(9, 0), removed_any=True)
    assert covers_rule((7, 3), exists=True, first=(5, 0), last_generated=(9, 0), removed_any=True)
    assert not covers_rule((4, 9), exists=True, first=(5, 0), last_generated=(9, 0), removed_any=True)
    # A stream lost in a Redis restart cannot vouch for an offset it never held.
    assert not covers_rule((4, 0), exists=False, first=None, last_generated=(0, 0), removed_any=False)
    assert covers_rule((9, 0), exists=True, first=None, last_generated=(9, 0), removed_any=True)


def test_memory_broker_trims_and_reports_coverage() -> None:
    async def scenario() -> None:
        broker = MemoryBroker(maxlen=3)
        seen: list[str] = []
        await broker.start(lambda _c, offset, _e: seen.append(offset))
        written = [broker.publish(CHANNEL_ALERTS, StreamEntry(f"alert|{i}", 0, "ON_TIME", True, {}))
                   for i in range(5)]
        assert seen == written
        assert written == sorted(written, key=lambda o: tuple(map(int, o.split("-"))))
        rows = await broker.history(CHANNEL_ALERTS, "0-0", written[-1], limit=10)
        assert [o for o, _ in rows] == written[2:]
        assert not await broker.covers(CHANNEL_ALERTS, written[0])
        assert await broker.covers(CHANNEL_ALERTS, written[2])
        broker.available = False
        assert not await broker.ping()
        with pytest.raises(BrokerUnavailableError):
            await broker.history(CHANNEL_ALERTS, "0-0", written[-1], limit=10)

    asyncio.run(scenario())


def test_the_protocol_doc_lists_every_close_code_with_its_advice() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "push-protocol.md").read_text()
    rows = re.findall(r"^\| (\d{4}) \| (\w+) +\| (yes|no) ", doc, flags=re.MULTILINE)
    documented = {int(code): (name, advice == "yes") for code, name, advice in rows}
    declared = {d.code: (name, d.reconnect) for name, d in vars(disconnect).items()
                if isinstance(d, Disconnect)}
    assert documented == declared
