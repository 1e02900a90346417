-- Onboarding: single-use enrolment tokens. Adding a site makes a pending router and one
-- token; the router fetches its script with it and posts back its public key and facts,
-- which spends it. Only the token's SHA-256 (hex) is stored, as for API tokens. At most
-- one token of a router is open (neither spent nor revoked): issuing another revokes it.
CREATE TABLE enrollment_tokens (
    token_hash  TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    router_id   TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    spent_at    BIGINT,
    spent_from  TEXT,
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX enrollment_tokens_open ON enrollment_tokens(router_id)
    WHERE spent_at IS NULL AND revoked_at IS NULL;

-- The serial number a router reported when it enrolled (none for a CHR): no two
-- routers of an organisation may claim the same one.
ALTER TABLE routers ADD COLUMN serial_number TEXT;
CREATE UNIQUE INDEX routers_serial_number ON routers(org_id, serial_number);
