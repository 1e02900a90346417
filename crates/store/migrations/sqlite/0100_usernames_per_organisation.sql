-- Usernames are unique within an organisation, no longer across all of them: one
-- tenant's names must not be discoverable by another (a 409 on a name it never used).
-- SQLite cannot drop a column's UNIQUE, so the table is rebuilt. This migration runs
-- outside a transaction so that foreign keys can be off while `users` is replaced
-- (with them on, dropping it would delete every session and unlink every token); it
-- opens its own.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE users_new (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organisations(id) ON DELETE CASCADE,
    username       TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    UNIQUE (org_id, username)
);
INSERT INTO users_new (id, org_id, username, role, password_hash, disabled, created_at)
    SELECT id, org_id, username, role, password_hash, disabled, created_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
CREATE INDEX users_org ON users(org_id);
COMMIT;
PRAGMA foreign_keys = ON;
