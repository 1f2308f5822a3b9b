-- Signed answers (docs/FORMAT.md, "Signed answers"). The server's online key signs every
-- answer to a check; each product's release key delegates to it with a statement the
-- publisher signs and sends with a release. One key for the whole deployment, shared by
-- every replica through the database; the release keys never reach the server.
-- Append-only: never edit a migration once released.
CREATE TABLE answer_keys (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    secret_key  TEXT NOT NULL,              -- the `.key` text of the online key
    created_at  INTEGER NOT NULL
);

-- The newest delegation of the product's release key to the online key, and its signature.
ALTER TABLE products ADD COLUMN delegation BLOB;
ALTER TABLE products ADD COLUMN delegation_sig BLOB;
