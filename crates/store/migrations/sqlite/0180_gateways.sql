-- Regional gateways (`postern gateway` processes). `postern admin add-gateway` makes a
-- pending row with a single-use join token (stored as its SHA-256 hex); the gateway's
-- join spends it and records how servers reach it (`control_address`), where routers
-- send WireGuard (`tunnel_endpoint`), the region tunnel's public key (the private half
-- never leaves the gateway) and its control-channel certificate. A region has at most
-- one joined gateway that is not removed: a new join for the region replaces the old.
CREATE TABLE gateways (
    id                    TEXT PRIMARY KEY,
    region_id             TEXT NOT NULL REFERENCES regions(id) ON DELETE CASCADE,
    created_by            TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    token_hash            TEXT UNIQUE,
    token_expires_at      BIGINT NOT NULL,
    joined_at             BIGINT,
    joined_from           TEXT,
    control_address       TEXT,
    tunnel_endpoint       TEXT,
    entry_host            TEXT,
    wireguard_public_key  TEXT,
    certificate_pem       TEXT,
    removed_at            BIGINT
);
CREATE UNIQUE INDEX gateways_one_per_region ON gateways(region_id)
    WHERE joined_at IS NOT NULL AND removed_at IS NULL;

-- The control plane's certificate authority for the control channel (one row): servers
-- issue themselves client certificates from it and sign gateways' requests at join. The
-- private key is sealed like every secret.
CREATE TABLE control_ca (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    certificate_pem  TEXT NOT NULL,
    private_key      BLOB NOT NULL,
    created_at       BIGINT NOT NULL
);
