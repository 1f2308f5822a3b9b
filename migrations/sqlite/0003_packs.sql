-- Packs: many small deltas and objects of one release pair under one zstd frame, stored at
-- packs/<fan>/<hash> (docs/FORMAT.md §7.1). Append-only: never edit a migration once released.

CREATE TABLE packs (
    hash        TEXT PRIMARY KEY,
    bytes       INTEGER NOT NULL,        -- stored size
    entries     TEXT NOT NULL,           -- the index: "<kind>:<target>" per entry, space-separated
    created_at  INTEGER NOT NULL
);

-- The packs the publisher made for a release pair, in the order plans try them.
CREATE TABLE plan_packs (
    from_release INTEGER NOT NULL REFERENCES releases (id),
    to_release   INTEGER NOT NULL REFERENCES releases (id),
    position     INTEGER NOT NULL,
    pack         TEXT NOT NULL REFERENCES packs (hash),
    PRIMARY KEY (from_release, to_release, position)
);
