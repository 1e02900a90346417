-- The management tunnel. A router is reached directly (`tunnel_address` is an address
-- the gateway already has a path to) or through its region's WireGuard tunnel; then
-- `tunnel_address` is its address inside the region's tunnel prefix (one router per
-- address and region) and `tunnel_public_key` its WireGuard public key (base64; NULL
-- while the router is pending, before it enrols). One key per router.
ALTER TABLE routers ADD COLUMN reach TEXT NOT NULL DEFAULT 'direct'
    CHECK (reach IN ('direct', 'tunnel'));
ALTER TABLE routers ADD COLUMN tunnel_public_key TEXT;
CREATE UNIQUE INDEX routers_tunnel_public_key ON routers(tunnel_public_key);
CREATE UNIQUE INDEX routers_tunnel_address ON routers(region_id, tunnel_address)
    WHERE reach = 'tunnel';

-- Each region's static WireGuard key, made at first start: the private key sealed like
-- other secrets (AES-256-GCM bound to this column and the region's id), the public key
-- in base64.
CREATE TABLE region_tunnels (
    region_id    TEXT PRIMARY KEY REFERENCES regions(id) ON DELETE CASCADE,
    private_key  BLOB NOT NULL,
    public_key   TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
