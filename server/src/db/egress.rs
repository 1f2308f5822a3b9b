//! Rollouts paced by an egress budget: which devices a rollout admitted, and what each clock
//! hour's admissions charged against the budget (migration 0011).
//!
//! The charge is taken with one conditional `UPDATE`, so replicas sharing the database
//! never admit more than the budget between them; a device already admitted is offered the
//! release again without a second charge.

use sqlx::Row;

use super::Db;
use crate::error::Result;

/// A paced rollout as an operator sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    /// What this hour's admissions charged.
    pub bytes_this_hour: u64,
    /// Devices admitted since the rollout began.
    pub devices: u64,
}

/// The clock hour (hours since 1970-01-01, UTC) of `now` (seconds).
pub fn hour_of(now: i64) -> i64 {
    now.div_euclid(3600)
}

impl Db {
    /// Admits `device` to rollout `rollout_id` if the hour's charges leave room for `bytes`
    /// within `budget` (an hour with nothing charged yet admits one device whatever its
    /// download, so a plan larger than the budget still goes out, one device an hour).
    /// A device admitted before is admitted again at no charge; one without an id is
    /// charged at each check.
    pub async fn admit(
        &self,
        rollout_id: i64,
        device: Option<&str>,
        bytes: u64,
        budget: u64,
    ) -> Result<bool> {
        if let Some(d) = device {
            let known = sqlx::query(
                "SELECT 1 FROM rollout_admissions WHERE rollout_id = $1 AND device_id = $2",
            )
            .bind(rollout_id)
            .bind(d)
            .fetch_optional(&self.pool)
            .await?;
            if known.is_some() {
                return Ok(true);
            }
        }
        let now = self.now();
        let hour = hour_of(now);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let budget = i64::try_from(budget).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO rollout_egress (rollout_id, hour, bytes, devices) VALUES ($1, $2, 0, 0)
             ON CONFLICT (rollout_id, hour) DO NOTHING",
        )
        .bind(rollout_id)
        .bind(hour)
        .execute(&self.pool)
        .await?;
        let charged = sqlx::query(
            "UPDATE rollout_egress SET bytes = bytes + $3, devices = devices + 1
             WHERE rollout_id = $1 AND hour = $2 AND (bytes = 0 OR bytes <= $4 - $3)",
        )
        .bind(rollout_id)
        .bind(hour)
        .bind(bytes)
        .bind(budget)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if charged {
            if let Some(d) = device {
                sqlx::query(
                    "INSERT INTO rollout_admissions (rollout_id, device_id, at) VALUES ($1, $2, $3)
                     ON CONFLICT (rollout_id, device_id) DO NOTHING",
                )
                .bind(rollout_id)
                .bind(d)
                .bind(now)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(charged)
    }

    /// What rollout `rollout_id` charged this hour, and the devices it admitted in all.
    pub async fn egress(&self, rollout_id: i64) -> Result<Egress> {
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN hour = $2 THEN bytes ELSE 0 END), 0) AS BIGINT),
                    CAST(COALESCE(SUM(devices), 0) AS BIGINT)
             FROM rollout_egress WHERE rollout_id = $1",
        )
        .bind(rollout_id)
        .bind(hour_of(self.now()))
        .fetch_one(&self.pool)
        .await?;
        let (bytes, devices): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        Ok(Egress {
            bytes_this_hour: bytes.max(0) as u64,
            devices: devices.max(0) as u64,
        })
    }

    /// Forgets the admissions and hourly charges of rollouts no channel points at any more
    /// (promoted again, rolled back): how many rows went.
    pub async fn prune_egress(&self) -> Result<u64> {
        let mut n = 0;
        for table in ["rollout_admissions", "rollout_egress"] {
            n += sqlx::query(&format!(
                "DELETE FROM {table} WHERE rollout_id NOT IN
                   (SELECT rollout_id FROM channels WHERE rollout_id IS NOT NULL)"
            ))
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::hour_of;

    #[test]
    fn hours_are_clock_hours() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(3599), 0);
        assert_eq!(hour_of(3600), 1);
        assert_eq!(hour_of(-1), -1);
    }
}
