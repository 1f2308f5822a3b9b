-- The dashboard's fleet figures without reading every device row: the version histogram
-- (home, ledger and devices pages: GROUP BY current_version) and a rollout's failure count
-- (channels page and the rollout watcher: attempted, last_result, seen_at) are answered from
-- these indexes. bench/dashboard.sh, 100,000 devices on SQLite: the histogram's query took
-- 128.6 ms without the first, 16.2 ms with it; the failure count 18.1 ms and 6.6 ms.
-- Append-only: never edit a migration once released.
CREATE INDEX devices_by_version ON devices (product_id, current_version);
CREATE INDEX devices_by_report ON devices (product_id, attempted, last_result, seen_at);
