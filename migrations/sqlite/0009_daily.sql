-- Daily rollups for the dashboard: which versions devices ran each UTC day, and what the
-- plans devices fetched cost against full images. A row per (product, day, version) and per
-- (product, day): bounded by releases, not by the fleet; housekeeping drops days older than
-- 400. Append-only: never edit a migration once released.

-- Devices seen on `day` (days since 1970-01-01, UTC) whose last check-in that day ran
-- `version` ('' for nothing installed yet); kept up by the check-in writer.
CREATE TABLE version_days (
    product_id  INTEGER NOT NULL REFERENCES products (id),
    day         INTEGER NOT NULL,
    version     TEXT NOT NULL,
    devices     INTEGER NOT NULL,
    PRIMARY KEY (product_id, day, version)
);
CREATE INDEX version_days_by_day ON version_days (day);

-- Plans fetched on `day`: how many, the bytes they download, and the image bytes of the
-- releases they lead to.
CREATE TABLE served_days (
    product_id      INTEGER NOT NULL REFERENCES products (id),
    day             INTEGER NOT NULL,
    plans           INTEGER NOT NULL,
    download_bytes  INTEGER NOT NULL,
    image_bytes     INTEGER NOT NULL,
    PRIMARY KEY (product_id, day)
);
CREATE INDEX served_days_by_day ON served_days (day);
