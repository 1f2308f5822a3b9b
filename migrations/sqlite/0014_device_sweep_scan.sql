-- Devices not seen for `serve --device-retention-days` are found by reading the whole devices
-- table, once per housekeeping interval (an hour by default), instead of through an index by
-- last check-in that every check-in had to keep up: one B-tree less per check-in written.
-- Append-only: never edit a migration once released.
DROP INDEX devices_by_seen;
