-- Share links: a transient access grant's credentials shown once, to whoever opens the
-- link first, until the grant ends. Only the link secret's SHA-256 (hex) is stored;
-- `id` names the link for revoking it. `created_by`/`created_from` say who made it,
-- `used_at`/`used_from` when and from where it was opened; `revoked_at` ends it early.
CREATE TABLE grant_shares (
    id           TEXT PRIMARY KEY,
    id_hash      TEXT NOT NULL UNIQUE,
    org_id       TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id    TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    access_id    TEXT NOT NULL REFERENCES transient_access(id) ON DELETE CASCADE,
    created_by   TEXT NOT NULL,
    created_from TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    used_from    TEXT,
    revoked_at   BIGINT
);
CREATE INDEX grant_shares_access ON grant_shares(access_id);
