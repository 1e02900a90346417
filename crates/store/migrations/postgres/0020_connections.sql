-- Connections through the gateway: one row per forwarded connection of a grant
-- (transient access or forward), written when it opens (ended_at NULL while it is live)
-- and completed when it ends, with the bytes each way and how it ended.
CREATE TABLE connections (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id       TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    grant_kind      TEXT NOT NULL CHECK (grant_kind IN ('access', 'forward')),
    grant_id        TEXT NOT NULL,
    source_address  TEXT NOT NULL,
    started_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    bytes_from_client  BIGINT NOT NULL DEFAULT 0,
    bytes_to_client    BIGINT NOT NULL DEFAULT 0,
    end_reason      TEXT
);
CREATE INDEX connections_grant ON connections(grant_id, started_at);
CREATE INDEX connections_open ON connections(ended_at) WHERE ended_at IS NULL;
