-- Dashboard sessions, shared by every replica. Append-only: never edit a migration once
-- released.

CREATE TABLE sessions (
    id_hash     BLOB PRIMARY KEY,        -- BLAKE3 of the session cookie; the cookie itself is not kept
    user_name   TEXT NOT NULL,
    csrf        TEXT NOT NULL,          -- the token every form of the session must carry
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_name, created_at);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
