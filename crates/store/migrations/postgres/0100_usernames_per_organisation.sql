-- Usernames are unique within an organisation, no longer across all of them: one
-- tenant's names must not be discoverable by another (a 409 on a name it never used).
ALTER TABLE users DROP CONSTRAINT users_username_key;
ALTER TABLE users ADD CONSTRAINT users_org_username_key UNIQUE (org_id, username);
