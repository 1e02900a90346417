-- Terminal sessions of the portal and their asciicast v2 recordings. One row per grant
-- the portal's Terminal button made (so the bridge opens only for such a grant, once);
-- the recording itself is appended as chunks while the session runs, so what was seen
-- survives a crash of the server. `size` counts the bytes of every chunk (the cap).
CREATE TABLE terminal_sessions (
    access_id    TEXT PRIMARY KEY REFERENCES transient_access(id) ON DELETE CASCADE,
    org_id       TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id    TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    ended_at     BIGINT,
    width        BIGINT,
    height       BIGINT,
    size         BIGINT NOT NULL DEFAULT 0,
    end_reason   TEXT
);
CREATE INDEX terminal_sessions_router ON terminal_sessions(router_id, created_at);

CREATE TABLE terminal_chunks (
    access_id  TEXT NOT NULL REFERENCES terminal_sessions(access_id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (access_id, seq)
);
