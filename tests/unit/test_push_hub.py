"""Hub fan-out, limits, slow clients and recovery ordering, with the in-memory broker (no sockets)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from push_server import disconnect, history, protocol
from push_server.broker import MemoryBroker
from push_server.disconnect import Disconnect
from push_server.hub import AdmissionRefusedError, Hub, HubClient
from push_server.protocol import KeyFilter
from push_server.writer import Outbox
from streaming_analytics.streams import CHANNEL_ALERTS, CHANNEL_FIXED, StreamEntry
from tests.unit.push_fakes import Written

pytestmark = pytest.mark.unit


def entry(key: str, n: int = 0) -> StreamEntry:
    return StreamEntry(key=key, pane=n, timing="EARLY", final=False, data={"count": n})


class Kicks:
    """Records the close codes the hub hands to connections."""

    def __init__(self) -> None:
        self.reasons: list[Disconnect] = []

    def __call__(self, reason: Disconnect) -> None:
        self.reasons.append(reason)


SOCKETS: dict[int, Written] = {}  # what each test client's outbox wrote, by id(outbox)


def add(hub: Hub, name: str, *, queue: int = 100, user: str | None = None,
        blocked: bool = False) -> tuple[HubClient, Kicks]:
    """A client whose socket keeps up, or (``blocked``) one whose socket stopped taking data."""
    kicks = Kicks()
    written = Written()
    outbox = Outbox(queue, written)
    if blocked:
        outbox.pause()
    SOCKETS[id(outbox)] = written
    return hub.register(name, user or name, outbox, kicks), kicks


def drain(client: HubClient) -> list[str]:
    """The text frames written to ``client``'s socket since the last call."""
    return SOCKETS[id(client.outbox)].texts()


def offsets(frames: list[str]) -> list[str]:
    return [orjson.loads(f)["offset"] for f in frames]


def test_one_serialisation_shared_by_all_subscribers() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=100)
    a, _ = add(hub, "a")
    b, _ = add(hub, "b")
    hub.subscribe(a, CHANNEL_FIXED, None)
    hub.subscribe(b, CHANNEL_FIXED, None)
    assert hub.publish(CHANNEL_FIXED, "1-0", entry("fixed|country|DE|0|1")) == 2
    [wire_a], [wire_b] = SOCKETS[id(a.outbox)], SOCKETS[id(b.outbox)]
    assert wire_a is wire_b  # the very same bytes object: serialised and framed once
    [frame_a] = drain(a)
    assert orjson.loads(frame_a)["key"] == "fixed|country|DE|0|1"
    assert hub.publish(CHANNEL_ALERTS, "2-0", entry("alert|e")) == 0


def test_key_filters() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=100)
    de, _ = add(hub, "de")
    everything, _ = add(hub, "all")
    hub.subscribe(de, CHANNEL_FIXED, KeyFilter(("fixed|country|DE",)))
    hub.subscribe(everything, CHANNEL_FIXED, None)
    for i, key in enumerate(["fixed|country|DE|0|1", "fixed|country|FR|0|1", "fixed|country|DEU|0|1"]):
        hub.publish(CHANNEL_FIXED, f"{i + 1}-0", entry(key))
    assert offsets(drain(de)) == ["1-0"]
    assert offsets(drain(everything)) == ["1-0", "2-0", "3-0"]


def test_slow_client_is_kicked_and_never_slows_the_others() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=100)
    slow, slow_kicks = add(hub, "slow", queue=2, blocked=True)
    fast, fast_kicks = add(hub, "fast", queue=100)
    hub.subscribe(slow, CHANNEL_FIXED, None)
    hub.subscribe(fast, CHANNEL_FIXED, None)
    for i in range(1, 6):
        hub.publish(CHANNEL_FIXED, f"{i}-0", entry("k"))
    assert slow_kicks.reasons == [disconnect.SLOW_CLIENT]
    assert fast_kicks.reasons == []
    assert offsets(drain(fast)) == [f"{i}-0" for i in range(1, 6)]
    assert hub.client_count == 1 and hub.subscriptions_by_channel() == {CHANNEL_FIXED: 1}
    assert hub.stats.dropped == 1 and hub.stats.kicked[4001] == 1


def test_a_failing_client_does_not_abort_the_fan_out() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=100)

    def explode(_reason: Disconnect) -> None:
        raise RuntimeError("connection already gone")

    blocked = Outbox(1, Written())
    blocked.pause()
    broken = hub.register("broken", "u", blocked, explode)
    ok, _ = add(hub, "ok")
    hub.subscribe(broken, CHANNEL_FIXED, None)
    hub.subscribe(ok, CHANNEL_FIXED, None)
    for i in range(1, 4):
        hub.publish(CHANNEL_FIXED, f"{i}-0", entry("k"))
    assert offsets(drain(ok)) == ["1-0", "2-0", "3-0"]
    assert broken.kicked is disconnect.SLOW_CLIENT and hub.client_count == 1


def test_per_user_connection_limit() -> None:
    hub = Hub(max_connections_per_user=2, max_pending=10)
    first, _ = add(hub, "c1", user="alice")
    add(hub, "c2", user="alice")
    with pytest.raises(AdmissionRefusedError) as info:
        add(hub, "c3", user="alice")
    assert info.value.close is disconnect.TOO_MANY_CONNECTIONS
    add(hub, "c4", user="bob")
    hub.unregister(first)
    hub.unregister(first)  # idempotent
    add(hub, "c5", user="alice")
    assert hub.client_count == 3


def test_unsubscribe_and_kick_all() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=10)
    a, a_kicks = add(hub, "a")
    _b, b_kicks = add(hub, "b")
    hub.subscribe(a, CHANNEL_FIXED, None)
    hub.subscribe(a, CHANNEL_ALERTS, None)
    hub.unsubscribe(a, CHANNEL_FIXED)
    hub.publish(CHANNEL_FIXED, "1-0", entry("k"))
    assert drain(a) == []
    assert hub.kick_all(disconnect.SHUTDOWN) == 2
    assert a_kicks.reasons == b_kicks.reasons == [disconnect.SHUTDOWN]
    assert hub.client_count == 0 and hub.subscription_count == 0


def test_recovery_buffers_live_entries_and_drops_what_was_replayed() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=10)
    c, _ = add(hub, "c")
    hub.subscribe(c, CHANNEL_FIXED, None, recovering=True)
    for i in (1, 2):  # the reader delivers while the replay is still running
        hub.publish(CHANNEL_FIXED, f"{i}-0", entry("k"))
    assert drain(c) == []
    # The client was ahead of a lagging reader: live delivery continues after 3-0.
    hub.finish_recovery(c, CHANNEL_FIXED, protocol.parse_offset("3-0"))
    for i in (3, 4, 5):
        hub.publish(CHANNEL_FIXED, f"{i}-0", entry("k"))
    assert offsets(drain(c)) == ["4-0", "5-0"]


def test_recovery_buffer_overflow_is_a_slow_client() -> None:
    hub = Hub(max_connections_per_user=10, max_pending=2)
    c, kicks = add(hub, "c")
    hub.subscribe(c, CHANNEL_FIXED, None, recovering=True)
    for i in range(1, 4):
        hub.publish(CHANNEL_FIXED, f"{i}-0", entry("k"))
    assert kicks.reasons == [disconnect.SLOW_CLIENT]


def test_replay_then_live_has_no_gap_and_no_duplicate() -> None:
    """Recovery end to end on the memory broker, with live entries arriving between history pages."""

    async def scenario() -> list[str]:
        hub = Hub(max_connections_per_user=10, max_pending=100)
        broker = MemoryBroker()
        await broker.start(hub.publish)
        written = [broker.publish(CHANNEL_FIXED, entry(f"k|{i}")) for i in range(7)]
        client, _ = add(hub, "c", queue=1000)
        since = written[1]
        hub.subscribe(client, CHANNEL_FIXED, None, recovering=True)
        until = broker.last_offset(CHANNEL_FIXED)
        assert until == written[-1]

        async def send(frame: str) -> None:
            await client.outbox.put(frame, timeout=1)
            written.append(broker.publish(CHANNEL_FIXED, entry("k|live")))  # arrives mid-replay

        live_from = await history.replay(broker, CHANNEL_FIXED, since, until, keys=None, send=send, page=2)
        assert live_from == until
        hub.finish_recovery(client, CHANNEL_FIXED, protocol.parse_offset(live_from))
        written.append(broker.publish(CHANNEL_FIXED, entry("k|after")))
        got = offsets(drain(client))
        assert got == written[2:]
        return got

    assert len(asyncio.run(scenario())) > 10


def test_replay_applies_the_key_filter_but_advances_past_skipped_entries() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        broker = MemoryBroker()
        keys = ["fixed|a|x", "fixed|b|x", "fixed|a|y", "fixed|b|y", "fixed|a|z"]
        written = [broker.publish(CHANNEL_FIXED, entry(k)) for k in keys]
        sent: list[str] = []

        async def send(frame: str) -> None:
            sent.append(orjson.loads(frame)["offset"])

        live_from = await history.replay(broker, CHANNEL_FIXED, written[0], written[3],
                                         keys=KeyFilter(("fixed|a",)), send=send, page=1)
        assert live_from == written[3]  # past the skipped entry, not stopping at the last sent one
        return sent, written

    sent, written = asyncio.run(scenario())
    assert sent == [written[2]]  # the bound excludes written[4]; the filter excludes b-keys
