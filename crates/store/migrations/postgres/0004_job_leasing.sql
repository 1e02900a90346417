-- Job leasing for the orchestrator: a creation order per job (`seq`), the grant a job
-- acts for (`grant_id`, so a revoke can supersede a pending create), and the address
-- routers see a region's gateway connections come from (`tunnel_source`).
ALTER TABLE jobs ADD COLUMN grant_id TEXT;
ALTER TABLE jobs ADD COLUMN seq BIGSERIAL;
CREATE INDEX jobs_router_seq ON jobs(router_id, seq);
CREATE INDEX jobs_grant ON jobs(grant_id);
ALTER TABLE regions ADD COLUMN tunnel_source TEXT;
