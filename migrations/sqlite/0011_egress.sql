-- Rollouts paced by an egress budget (`promote --max-bytes-per-hour N`): each device in the
-- wave is admitted once, charged the download its plan names, while the hour's charges stay
-- within the budget. Rows per rollout and hour, and per admitted device of a rollout;
-- housekeeping drops both once a channel no longer points at the rollout.
-- Append-only: never edit a migration once released.
ALTER TABLE rollouts ADD COLUMN max_bytes_per_hour INTEGER;   -- NULL: not paced by bytes

-- What the rollout's admissions charged in one hour (hours since 1970-01-01, UTC).
CREATE TABLE rollout_egress (
    rollout_id  INTEGER NOT NULL REFERENCES rollouts (id),
    hour        INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    devices     INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, hour)
);

-- The devices a paced rollout admitted: they are offered its release from then on.
CREATE TABLE rollout_admissions (
    rollout_id  INTEGER NOT NULL REFERENCES rollouts (id),
    device_id   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
