-- 0001: aggregates, alerts and dead letters written by the pipeline's sinks (docs/sinks.md).
-- Runs with search_path set to the target schema; names are therefore unqualified.

-- One row per (aggregate kind, dimension, dimension key, window): the newest pane seen so far.
-- The sink's upsert only replaces a row with a strictly higher pane_index, so late or replayed
-- panes never move a row backwards.
CREATE TABLE aggregates (
    kind            text             NOT NULL,
    dimension       text             NOT NULL,
    dimension_key   text             NOT NULL,
    window_start    timestamptz      NOT NULL,
    window_end      timestamptz      NOT NULL,
    pane_index      integer          NOT NULL CHECK (pane_index >= 0),
    timing          text             NOT NULL CHECK (timing IN ('EARLY', 'ON_TIME', 'LATE', 'UNKNOWN')),
    is_final        boolean          NOT NULL,
    count           bigint           NOT NULL CHECK (count >= 0),
    sum_amount      double precision NOT NULL,
    -- NULL when count is 0, as in the stream contract (docs/stream-contract.md).
    mean_amount     double precision,
    min_amount      double precision,
    max_amount      double precision,
    p50             double precision,
    p95             double precision,
    p99             double precision,
    distinct_users  bigint           NOT NULL CHECK (distinct_users >= 0),
    emitted_at      timestamptz      NOT NULL,
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT aggregates_pkey
        PRIMARY KEY (kind, dimension, dimension_key, window_start, window_end),
    CONSTRAINT aggregates_window_order CHECK (window_end > window_start)
);
-- History of one key is served by the primary key's prefix; this one serves "every key of a
-- dimension over a time range" (dashboards, the push server's fallback beyond Redis' MAXLEN).
CREATE INDEX aggregates_kind_dimension_window_idx
    ON aggregates (kind, dimension, window_start DESC);

-- Alerts are immutable facts: written once, a replay is a no-op.
CREATE TABLE alerts (
    alert_id        text             PRIMARY KEY,
    event_id        text             NOT NULL,
    user_id         text             NOT NULL,
    score           double precision NOT NULL,
    model_version   text             NOT NULL,
    event_time      timestamptz      NOT NULL,
    emitted_at      timestamptz      NOT NULL,
    inserted_at     timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX alerts_event_time_idx ON alerts (event_time DESC);
CREATE INDEX alerts_user_event_time_idx ON alerts (user_id, event_time DESC);

-- Records the pipeline refused. A record's Kafka position identifies it, so a replay (restore
-- from a checkpoint, re-run of a topic range) finds the row already there. Dead letters without
-- a position (valid events refused as too late) are identified by reason and payload instead.
CREATE TABLE dead_letters (
    id               bigserial   PRIMARY KEY,
    raw              bytea,
    raw_sha256       bytea       NOT NULL GENERATED ALWAYS AS (sha256(coalesce(raw, ''::bytea))) STORED,
    reason_code      text        NOT NULL,
    reason_detail    text        NOT NULL,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    failed_at        timestamptz NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_source_key UNIQUE (source_topic, source_partition, source_offset),
    CONSTRAINT dead_letters_source_complete CHECK (
        (source_topic IS NULL) = (source_partition IS NULL)
        AND (source_topic IS NULL) = (source_offset IS NULL))
);
CREATE UNIQUE INDEX dead_letters_positionless_key
    ON dead_letters (reason_code, raw_sha256) WHERE source_offset IS NULL;
CREATE INDEX dead_letters_reason_failed_at_idx ON dead_letters (reason_code, failed_at DESC);
CREATE INDEX dead_letters_failed_at_idx ON dead_letters (failed_at DESC);
