-- Signed answers (docs/FORMAT.md, "Signed answers"). The server's online key signs every
-- answer to a check; each product's release key delegates to it with a statement the
-- publisher signs and sends with a release. One key for the whole deployment, shared by
-- every replica through the database; the release keys never reach the server.
-- Append-only: never edit a migration once released.
CREATE TABLE answer_keys (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    secret_key  TEXT NOT NULL,              -- the `.key` text of the online key
    created_at  BIGINT NOT NULL
);

-- The newest delegation of the product's release key to the online key, and its signature.
ALTER TABLE products ADD COLUMN delegation BYTEA;
ALTER TABLE products ADD COLUMN delegation_sig BYTEA;

-- Release key rotations (`deltaroot rotate-key`): each statement signed by the key it
-- replaces (`old_key`), oldest first; devices learn the product's current key from them
-- and the server still verifies releases signed by an old key.
CREATE TABLE key_rotations (
    id          BIGSERIAL PRIMARY KEY,
    product_id  BIGINT NOT NULL REFERENCES products (id),
    old_key     TEXT NOT NULL,
    statement   BYTEA NOT NULL,
    signature   BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX key_rotations_product ON key_rotations (product_id, id);

-- Raised by every change of a channel (promote, pause, resume, rollback, rollout changes):
-- signed answers carry it, and a device refuses an answer showing a lower one than it took.
ALTER TABLE channels ADD COLUMN serial BIGINT NOT NULL DEFAULT 0;

-- Enrolled devices (`deltaroot-agent enroll`, a token with the enroll scope): the key each
-- signs its check-ins with. A check-in of an enrolled device that is not validly signed is
-- not recorded; `devices.signed` says the last one was signed.
CREATE TABLE device_keys (
    product_id  BIGINT NOT NULL REFERENCES products (id),
    device_id   TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    enrolled_by TEXT NOT NULL,
    PRIMARY KEY (product_id, device_id)
);
ALTER TABLE devices ADD COLUMN signed BIGINT NOT NULL DEFAULT 0;
-- A rollout whose failure-rate stop counts signed reports only.
ALTER TABLE rollouts ADD COLUMN signed_reports_only BIGINT NOT NULL DEFAULT 0;
