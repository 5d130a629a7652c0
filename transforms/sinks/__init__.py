"""The pipeline's sinks: where aggregates, alerts and dead letters leave the job (docs/sinks.md).

- ``postgres`` — aggregates (newest pane wins), alerts and dead letters, idempotent;
- ``redis`` — the live streams of the stream contract, at least once;
- ``kafka`` — dead letters to the DLQ topic, the last path;
- ``base`` — the batching DoFn they share, and how a record a store cannot take is refused
  (dead-lettered with reason ``sink_rejected``) instead of failing the job;
- ``convert`` — what the sinks accept, normalised at their boundary (field lists, record → dict,
  a dead letter's identity, exact times).

The retry policy they share with the Kafka source is :mod:`transforms.retry`; their counter names
are in :mod:`transforms.metrics`.
"""
