-- Postern's schema for SQLite. Portable column types shared with PostgreSQL:
-- ids are TEXT uuids, times are BIGINT unix milliseconds (UTC), secrets are
-- nonce||ciphertext BLOBs, JSON is TEXT.

CREATE TABLE organisations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    username       TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL
);
CREATE INDEX users_org ON users(org_id);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    token_hash    TEXT NOT NULL UNIQUE,
    created_by    TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_tokens_org ON api_tokens(org_id);

CREATE TABLE regions (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    entry_point  TEXT NOT NULL,
    port_min     BIGINT NOT NULL CHECK (port_min BETWEEN 1 AND 65535),
    port_max     BIGINT NOT NULL CHECK (port_max BETWEEN port_min AND 65535),
    created_at   BIGINT NOT NULL
);

CREATE TABLE sites (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE routers (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    site_id           TEXT NOT NULL UNIQUE REFERENCES sites(id),
    region_id         TEXT NOT NULL REFERENCES regions(id),
    name              TEXT NOT NULL,
    tunnel_address    TEXT NOT NULL,
    api_port          BIGINT NOT NULL,
    ssh_port          BIGINT NOT NULL,
    winbox_port       BIGINT NOT NULL,
    username          TEXT NOT NULL,
    password          BLOB NOT NULL,
    status            TEXT NOT NULL,
    identity          TEXT,
    routeros_version  TEXT,
    board_name        TEXT,
    last_seen_at      BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE transient_access (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id       TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    region_id       TEXT NOT NULL REFERENCES regions(id),
    access_type     TEXT NOT NULL,
    access          TEXT NOT NULL,
    allow_rfc1918   BOOLEAN NOT NULL,
    allow_from      TEXT NOT NULL,
    username        TEXT NOT NULL,
    password        BLOB NOT NULL,
    port            BIGINT NOT NULL,
    entry_point     TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    authorized_at   BIGINT,
    ended_at        BIGINT,
    revoked_early   BOOLEAN NOT NULL DEFAULT FALSE,
    failure_reason  TEXT
);
CREATE INDEX transient_access_router ON transient_access(router_id, created_at);
CREATE INDEX transient_access_status ON transient_access(status);

CREATE TABLE transient_forwards (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id       TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    region_id       TEXT NOT NULL REFERENCES regions(id),
    dst_address     TEXT NOT NULL,
    dst_port        BIGINT NOT NULL,
    masquerade      BOOLEAN NOT NULL,
    allow_from      TEXT NOT NULL,
    port            BIGINT NOT NULL,
    router_port     BIGINT NOT NULL,
    entry_point     TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    authorized_at   BIGINT,
    ended_at        BIGINT,
    revoked_early   BOOLEAN NOT NULL DEFAULT FALSE,
    failure_reason  TEXT
);
CREATE INDEX transient_forwards_router ON transient_forwards(router_id, created_at);
CREATE INDEX transient_forwards_status ON transient_forwards(status);

-- One row per grant (access or forward) that holds a gateway port: inserted with the
-- grant, deleted when the grant reaches a final state. The primary key is what makes
-- two concurrent creates unable to share a port.
CREATE TABLE gateway_ports (
    region_id  TEXT NOT NULL REFERENCES regions(id),
    port       BIGINT NOT NULL,
    grant_id   TEXT NOT NULL UNIQUE,
    PRIMARY KEY (region_id, port)
);

-- The same for the dst-nat port a forward uses on its router.
CREATE TABLE router_ports (
    router_id  TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    port       BIGINT NOT NULL,
    grant_id   TEXT NOT NULL UNIQUE,
    PRIMARY KEY (router_id, port)
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id         TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    kind              TEXT NOT NULL,
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    max_attempts      BIGINT NOT NULL,
    run_after         BIGINT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    last_error        TEXT
);
CREATE INDEX jobs_router ON jobs(router_id, created_at);
CREATE INDEX jobs_runnable ON jobs(state, run_after);

CREATE TABLE job_lines (
    job_id   TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq      BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    message  TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Append-only: the store has no statement that updates or deletes a row here.
CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id         TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    actor_address  TEXT,
    action         TEXT NOT NULL,
    target         TEXT,
    details        TEXT NOT NULL
);
CREATE INDEX audit_log_org ON audit_log(org_id, id);
