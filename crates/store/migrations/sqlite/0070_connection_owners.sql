-- Which gateway run (one per `postern server` process) records each connection, and
-- the runs alive now with their last heartbeat, so that a server ends only the live
-- connections of runs that are gone, never those of another server on the same
-- database. Rows from before this migration have no owner: any server ends them.
CREATE TABLE gateway_runs (
    id          TEXT PRIMARY KEY,
    process     TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL
);
ALTER TABLE connections ADD COLUMN gateway_run_id TEXT;
CREATE INDEX connections_open_by_run ON connections(gateway_run_id) WHERE ended_at IS NULL;
