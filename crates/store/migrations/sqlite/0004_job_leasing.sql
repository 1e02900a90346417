-- Job leasing for the orchestrator: a creation order per job (`seq`, from SQLite's
-- rowid, filled by a trigger so inserts need not name it), the grant a job acts for
-- (`grant_id`, so a revoke can supersede a pending create), and the address routers see
-- a region's gateway connections come from (`tunnel_source`, for users' `address=`).
ALTER TABLE jobs ADD COLUMN grant_id TEXT;
ALTER TABLE jobs ADD COLUMN seq BIGINT;
UPDATE jobs SET seq = rowid;
CREATE TRIGGER jobs_seq AFTER INSERT ON jobs WHEN NEW.seq IS NULL
BEGIN
    UPDATE jobs SET seq = NEW.rowid WHERE rowid = NEW.rowid;
END;
CREATE INDEX jobs_router_seq ON jobs(router_id, seq);
CREATE INDEX jobs_grant ON jobs(grant_id);
ALTER TABLE regions ADD COLUMN tunnel_source TEXT;
