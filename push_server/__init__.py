"""WebSocket push server: relays the platform's Redis streams to authenticated clients.

Run it with ``python -m push_server`` (configuration from ``SA_PUSH_*``/``SA_JWT_*``, see
streaming_analytics/settings.py); the protocol is documented in docs/push-protocol.md.

Modules, one responsibility each (tests/unit/test_push_layout.py keeps this list complete):

- the wire, free of I/O: ``protocol`` (messages of protocol version 1), ``disconnect`` (close
  codes with reconnect advice), ``frames`` (a publication's frame bytes, built once), ``client``
  (one session's state machine), ``auth`` (JWT verification);
- one process: ``node`` (wires a process together, sweeps timers, drains), ``listener`` (routes
  an accepted socket to a ``connection`` or to Sanic), ``connection`` (asyncio driver of one
  WebSocket; what it needs from its node is the ``NodeServices`` protocol), ``writer`` (the
  bounded send path), ``hub`` (subscriptions and fan-out), ``broker`` (stream backends: Redis,
  memory), ``metrics`` (Prometheus);
- recovery and history: ``history`` (replay after an offset), ``seam`` (no duplicate between a
  Postgres replay and Redis), ``pg`` (asyncio front of a psycopg2 pool), ``pg_history`` (queries
  of the pipeline's tables), ``rest`` and ``rest_params`` (REST history endpoints and their
  parameters), ``cursor`` (keyset-paging cursors);
- entry points: ``__main__`` (``python -m push_server``), ``app`` (the Sanic routes),
  ``devtokens`` (mints tokens for local development; the server never imports it).

``static/`` holds the dashboard, ``frontend/`` the npm manifest of its chart library.
"""
