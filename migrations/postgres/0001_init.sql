-- deltaroot server schema, PostgreSQL: the same tables as sqlite/0001_init.sql.
-- Append-only: never edit a migration once released.

CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    token_hash  BYTEA NOT NULL UNIQUE,   -- BLAKE3 of the token; the token itself is not kept
    created_at  BIGINT NOT NULL
);

CREATE TABLE products (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,           -- the `.pub` text its releases must be signed with
    created_at  BIGINT NOT NULL
);

-- Whole contents, zstd-compressed, stored at objects/<fan>/<hash>.
CREATE TABLE objects (
    hash        TEXT PRIMARY KEY,
    bytes       BIGINT NOT NULL,         -- stored (compressed) size
    size        BIGINT NOT NULL,         -- content size
    created_at  BIGINT NOT NULL
);

-- Deltas, stored at deltas/<fan of target>/<source>-<target>.
CREATE TABLE deltas (
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    method      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (source, target)
);
CREATE INDEX deltas_by_target ON deltas (target);

CREATE TABLE releases (
    id           BIGSERIAL PRIMARY KEY,
    product_id   BIGINT NOT NULL REFERENCES products (id),
    version      TEXT NOT NULL,
    created      BIGINT NOT NULL,        -- the manifest's release time
    manifest     BYTEA NOT NULL,
    signature    BYTEA NOT NULL,
    image_bytes  BIGINT NOT NULL,
    entries      BIGINT NOT NULL,
    published_at BIGINT NOT NULL,
    published_by TEXT NOT NULL,          -- token name
    UNIQUE (product_id, version)
);

-- Download plans by release pair; from_release 0 means a device with nothing installed.
CREATE TABLE plans (
    from_release   BIGINT NOT NULL,
    to_release     BIGINT NOT NULL REFERENCES releases (id),
    plan           TEXT NOT NULL,
    download_bytes BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (from_release, to_release)
);

CREATE TABLE channels (
    product_id  BIGINT NOT NULL REFERENCES products (id),
    name        TEXT NOT NULL,
    release_id  BIGINT NOT NULL REFERENCES releases (id),
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (product_id, name)
);
