-- Transient access made by the portal's Terminal button: the server itself connects to
-- the router for it, so the gateway opens no entry port for it.
ALTER TABLE transient_access ADD COLUMN terminal BOOLEAN NOT NULL DEFAULT FALSE;
