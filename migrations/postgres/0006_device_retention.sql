-- Devices not seen for `serve --device-retention-days` are forgotten: the sweep finds them by
-- their last check-in. Append-only: never edit a migration once released.

CREATE INDEX devices_by_seen ON devices (seen_at);
