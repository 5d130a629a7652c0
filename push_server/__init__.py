"""WebSocket push server: relays the platform's Redis streams to authenticated clients.

Run it with ``python -m push_server`` (configuration from ``SA_PUSH_*``/``SA_JWT_*``, see
streaming_analytics/settings.py); the protocol is documented in docs/push-protocol.md.

Layout (one responsibility per module): ``protocol`` (wire format), ``disconnect`` (close codes),
``auth`` (JWT), ``client`` (sans-I/O session state machine), ``writer`` (bounded send queue),
``hub`` (subscriptions and fan-out), ``broker`` (stream backends), ``history`` (recovery),
``connection`` (asyncio driver of one session), ``node`` (wiring), ``metrics``, ``app`` (Sanic).
"""
