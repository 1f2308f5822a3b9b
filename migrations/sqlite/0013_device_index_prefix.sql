-- devices_by_attempted (product_id, attempted) is the prefix of devices_by_report (product_id,
-- attempted, last_result, seen_at), which answers every query the first did: one index less
-- for each check-in to keep up (bench/load.sh, SQLite: the writer's CPU per check-in, with
-- the cache and temp-store settings of the same change, 10.3 to 8.5 µs).
-- Append-only: never edit a migration once released.
DROP INDEX devices_by_attempted;
