-- Grant lists without reading history, and a version that says when a router's grants changed.
--
-- `routers.grants_version` goes up in the same transaction as every insert or update of
-- one of the router's grants (the triggers below), whichever process or statement made
-- it: a server that cached a router's grant list reads this one column to know whether
-- its copy is still exact. Grants are only deleted with their router.
ALTER TABLE routers ADD COLUMN grants_version BIGINT NOT NULL DEFAULT 0;

CREATE TRIGGER transient_access_version_insert AFTER INSERT ON transient_access
BEGIN
    UPDATE routers SET grants_version = grants_version + 1 WHERE id = NEW.router_id;
END;

CREATE TRIGGER transient_access_version_update AFTER UPDATE ON transient_access
BEGIN
    UPDATE routers SET grants_version = grants_version + 1 WHERE id = NEW.router_id;
END;

CREATE TRIGGER transient_forwards_version_insert AFTER INSERT ON transient_forwards
BEGIN
    UPDATE routers SET grants_version = grants_version + 1 WHERE id = NEW.router_id;
END;

CREATE TRIGGER transient_forwards_version_update AFTER UPDATE ON transient_forwards
BEGIN
    UPDATE routers SET grants_version = grants_version + 1 WHERE id = NEW.router_id;
END;

-- The default list reads only grants that are not final; ended ones (most rows, as
-- history grows) are read newest first through the (router_id, created_at) index.
CREATE INDEX transient_access_router_live ON transient_access(router_id, created_at)
    WHERE status IN ('requested', 'provisioning', 'active', 'closing');
CREATE INDEX transient_forwards_router_live ON transient_forwards(router_id, created_at)
    WHERE status IN ('requested', 'provisioning', 'active', 'closing');
