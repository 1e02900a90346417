-- Router facts for the portal's Overview: the router's uptime as it printed it
-- (`/system/resource/print`, e.g. `1w2d3h4m5s`) when last seen (`last_seen_at`); the
-- identity, RouterOS version and board name already have columns (migration 1).
ALTER TABLE routers ADD COLUMN uptime TEXT;
