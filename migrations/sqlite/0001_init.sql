-- deltaroot server schema, SQLite. Append-only: never edit a migration once released.

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    token_hash  BLOB NOT NULL UNIQUE,    -- BLAKE3 of the token; the token itself is not kept
    created_at  INTEGER NOT NULL
);

CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,           -- the `.pub` text its releases must be signed with
    created_at  INTEGER NOT NULL
);

-- Whole contents, zstd-compressed, stored at objects/<fan>/<hash>.
CREATE TABLE objects (
    hash        TEXT PRIMARY KEY,
    bytes       INTEGER NOT NULL,        -- stored (compressed) size
    size        INTEGER NOT NULL,        -- content size
    created_at  INTEGER NOT NULL
);

-- Deltas, stored at deltas/<fan of target>/<source>-<target>.
CREATE TABLE deltas (
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    method      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (source, target)
);
CREATE INDEX deltas_by_target ON deltas (target);

CREATE TABLE releases (
    id           INTEGER PRIMARY KEY,
    product_id   INTEGER NOT NULL REFERENCES products (id),
    version      TEXT NOT NULL,
    created      INTEGER NOT NULL,       -- the manifest's release time
    manifest     BLOB NOT NULL,
    signature    BLOB NOT NULL,
    image_bytes  INTEGER NOT NULL,
    entries      INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    published_by TEXT NOT NULL,          -- token name
    UNIQUE (product_id, version)
);

-- Download plans by release pair; from_release 0 means a device with nothing installed.
CREATE TABLE plans (
    from_release   INTEGER NOT NULL,
    to_release     INTEGER NOT NULL REFERENCES releases (id),
    plan           TEXT NOT NULL,
    download_bytes INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (from_release, to_release)
);

CREATE TABLE channels (
    product_id  INTEGER NOT NULL REFERENCES products (id),
    name        TEXT NOT NULL,
    release_id  INTEGER NOT NULL REFERENCES releases (id),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (product_id, name)
);
