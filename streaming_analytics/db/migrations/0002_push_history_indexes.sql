-- 0002: indexes for the push server's history (push_server/pg_history.py, docs/push-protocol.md).
-- Runs with search_path set to the target schema; names are therefore unqualified.

-- Recovery beyond the Redis stream asks "which windows of this kind changed in a time range",
-- oldest change first: updated_at is when the sink last moved the row to a newer pane.
CREATE INDEX aggregates_kind_updated_at_idx ON aggregates (kind, updated_at);

-- The same question for alerts, which are written once: when the row was inserted.
CREATE INDEX alerts_inserted_at_idx ON alerts (inserted_at);
