-- The live grants by their end: the expiry timer asks for those due and for the next
-- end on every grant created or changed, so it reads only those rows (the first of
-- them for the next end), however many grants are live.
CREATE INDEX transient_access_live_expiry ON transient_access(expires_at)
    WHERE status IN ('requested', 'provisioning', 'active');
CREATE INDEX transient_forwards_live_expiry ON transient_forwards(expires_at)
    WHERE status IN ('requested', 'provisioning', 'active');
