-- Who may do what: scoped tokens and dashboard users; the same as sqlite/0007_access.sql.
-- Append-only: never edit a migration once released.

-- A token's scopes, comma-separated (`read`, `publish`, `operate`), or `all`: every right a
-- token had before scopes existed (read, publish and operate on every product), which every
-- token made before this migration keeps.
ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT 'all';
-- The products a token may act on, comma-separated; NULL: every product.
ALTER TABLE tokens ADD COLUMN products TEXT;

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,         -- viewer, operator or admin
    password_hash TEXT NOT NULL,         -- argon2id, in the PHC string format
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
