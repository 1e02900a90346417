-- API-SSL to a router: whether its API is reached over TLS, and the SHA-256 of the
-- certificate pinned (given by an admin, or learnt on first use and kept).
ALTER TABLE routers ADD COLUMN api_tls BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE routers ADD COLUMN api_tls_fingerprint TEXT;
