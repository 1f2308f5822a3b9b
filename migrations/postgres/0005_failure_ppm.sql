-- A rollout's failure-rate limit in parts per million: an integer binds alike on both
-- backends with or without a value (sqlx's Any driver sent a NULL float to PostgreSQL as
-- `real`, which a cached statement kept). `max_failure_rate` stays, written from the same
-- value, for replicas that still read it. Append-only: never edit a migration once released.

ALTER TABLE rollouts ADD COLUMN max_failure_ppm BIGINT;
UPDATE rollouts SET max_failure_ppm = CAST(ROUND(max_failure_rate * 1000000) AS BIGINT)
    WHERE max_failure_rate IS NOT NULL;
