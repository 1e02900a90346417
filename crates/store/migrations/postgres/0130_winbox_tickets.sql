-- One-time WinBox tickets: each reading of a WinBox grant's credentials makes one, and
-- the launcher redeems it (once, within about a minute) for the password. Only the
-- ticket's SHA-256 (hex) is stored; it is bound to its grant and to whoever asked
-- (`issued_to`, and the user or API token behind it). `used_at` is set by the one
-- redemption that succeeds in taking it.
CREATE TABLE winbox_tickets (
    id_hash     TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id   TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    access_id   TEXT NOT NULL REFERENCES transient_access(id) ON DELETE CASCADE,
    issued_to   TEXT NOT NULL,
    user_id     TEXT,
    token_id    TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_from   TEXT
);
CREATE INDEX winbox_tickets_expires ON winbox_tickets(expires_at);
