-- Fleet: channels that can be paused and rolled back, staged rollouts, device check-ins and
-- the audit log. Append-only: never edit a migration once released.

-- A promotion, at once (100 %) or in waves; a channel points at its newest one.
CREATE TABLE rollouts (
    id                  INTEGER PRIMARY KEY,
    product_id          INTEGER NOT NULL REFERENCES products (id),
    channel             TEXT NOT NULL,
    release_id          INTEGER NOT NULL REFERENCES releases (id),
    previous_release_id INTEGER REFERENCES releases (id),   -- offered to devices outside the wave
    floor_release_id    INTEGER REFERENCES releases (id),   -- every older device installs it first
    start_percent       REAL NOT NULL,
    step_percent        REAL NOT NULL,
    step_secs           INTEGER NOT NULL,
    max_failure_rate    REAL,                               -- NULL: never stops by itself
    min_reports         INTEGER NOT NULL,
    started_at          INTEGER NOT NULL,                   -- steps count from here
    created_at          INTEGER NOT NULL,                   -- failure reports count from here
    state               TEXT NOT NULL,                      -- active | stopped | superseded
    reason              TEXT,
    created_by          TEXT NOT NULL
);

ALTER TABLE channels ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE channels ADD COLUMN rollout_id INTEGER REFERENCES rollouts (id);
-- The signed downgrade statement (docs/FORMAT.md) in force since a rollback, and its signature.
ALTER TABLE channels ADD COLUMN downgrade BLOB;
ALTER TABLE channels ADD COLUMN downgrade_sig BLOB;

-- The last check-in of each device, written in batches.
CREATE TABLE devices (
    product_id      INTEGER NOT NULL REFERENCES products (id),
    device_id       TEXT NOT NULL,
    channel         TEXT NOT NULL,
    current_version TEXT,
    last_result     TEXT,                                   -- ok | failed | rolled-back
    attempted       TEXT,                                   -- the version of that last attempt
    seen_at         INTEGER NOT NULL,
    PRIMARY KEY (product_id, device_id)
);
CREATE INDEX devices_by_attempted ON devices (product_id, attempted);

-- Who changed what, when.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    who     TEXT NOT NULL,                                  -- token name, or `server`
    product TEXT NOT NULL,
    channel TEXT,
    action  TEXT NOT NULL,                                  -- publish promote pause resume rollback rollout stop
    detail  TEXT NOT NULL                                   -- JSON
);
CREATE INDEX audit_by_product ON audit (product, id);
