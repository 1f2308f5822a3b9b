//! Daily rollups for the dashboard (migration 0009), one row per (product, UTC day, version)
//! and per (product, UTC day): their size follows releases and days, never the fleet.
//!
//! - `version_days`: devices seen each day by the version of their last check-in that day.
//!   The check-in writer keeps it up from the device's previous check-in (the `devices`
//!   row): a device first seen that day adds one to its version; one that changed version
//!   within the day moves from the old version to the new. No check-in is kept.
//! - `served_days`: the plans devices fetched each day, their download bytes, and the image
//!   bytes of the releases they lead to (what full images would have cost).
//!
//! Housekeeping drops days older than [`KEEP_DAYS`].

use std::collections::HashMap;

use sqlx::Row;

use super::{Db, Tx};
use crate::error::Result;

/// Days the rollups keep.
pub const KEEP_DAYS: i64 = 400;

/// The UTC day (days since 1970-01-01) of a time in seconds.
pub fn day_of(secs: i64) -> i64 {
    secs.div_euclid(86_400)
}

/// What a device's check-ins change in `version_days`, by (product, day, version).
pub(super) type VersionDeltas = HashMap<(i64, i64, String), i64>;

/// Adds a check-in at `at` running `current` to `deltas`, given the device's previous
/// check-in (its time and version) if it has one.
pub(super) fn count_checkin(
    deltas: &mut VersionDeltas,
    product_id: i64,
    previous: Option<(i64, Option<&str>)>,
    at: i64,
    current: Option<&str>,
) {
    let day = day_of(at);
    let now = current.unwrap_or("").to_string();
    let mut add =
        |version: String, n: i64| *deltas.entry((product_id, day, version)).or_default() += n;
    match previous {
        None => add(now, 1),
        Some((seen, before)) => {
            let seen_day = day_of(seen);
            let before = before.unwrap_or("");
            if seen_day < day {
                add(now, 1);
            } else if seen_day == day && before != now {
                add(before.to_string(), -1);
                add(now, 1);
            }
            // A previous check-in on a later day (another replica's clock ahead): counted there.
        }
    }
}

/// One day of a product's plans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedDay {
    pub plans: u64,
    pub download_bytes: u64,
    pub image_bytes: u64,
}

impl Db {
    /// Writes what a batch of check-ins changed in `version_days`.
    pub(super) async fn add_version_days(tx: &mut Tx<'_>, deltas: VersionDeltas) -> Result<()> {
        let mut rows: Vec<_> = deltas.into_iter().filter(|(_, n)| *n != 0).collect();
        rows.sort_unstable();
        for ((product_id, day, version), n) in rows {
            sqlx::query(
                "INSERT INTO version_days (product_id, day, version, devices) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (product_id, day, version)
                 DO UPDATE SET devices = version_days.devices + excluded.devices",
            )
            .bind(product_id)
            .bind(day)
            .bind(version)
            .bind(n)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Devices per version of each day from `first` to `last` (inclusive): (day, version,
    /// devices), by day then version; `None` is a device with nothing installed.
    pub async fn version_days(
        &self,
        product_id: i64,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, Option<String>, u64)>> {
        let rows = sqlx::query(
            "SELECT day, version, devices FROM version_days
             WHERE product_id = $1 AND day >= $2 AND day <= $3 AND devices > 0
             ORDER BY day, version",
        )
        .bind(product_id)
        .bind(first)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let v: String = r.try_get(1)?;
                let n: i64 = r.try_get(2)?;
                Ok((r.try_get(0)?, (!v.is_empty()).then_some(v), n.max(0) as u64))
            })
            .collect()
    }

    /// Counts a plan fetched at the database's clock: its download and the image it leads to.
    pub async fn count_plan(
        &self,
        product_id: i64,
        download_bytes: u64,
        image_bytes: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO served_days (product_id, day, plans, download_bytes, image_bytes)
             VALUES ($1, $2, 1, $3, $4)
             ON CONFLICT (product_id, day) DO UPDATE SET plans = served_days.plans + 1,
                download_bytes = served_days.download_bytes + excluded.download_bytes,
                image_bytes = served_days.image_bytes + excluded.image_bytes",
        )
        .bind(product_id)
        .bind(day_of(self.now()))
        .bind(i64::try_from(download_bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(image_bytes).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A product's plans from day `first` to `last` (inclusive), added up.
    pub async fn served(&self, product_id: i64, first: i64, last: i64) -> Result<ServedDay> {
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(plans), 0) AS BIGINT),
                    CAST(COALESCE(SUM(download_bytes), 0) AS BIGINT),
                    CAST(COALESCE(SUM(image_bytes), 0) AS BIGINT)
             FROM served_days WHERE product_id = $1 AND day >= $2 AND day <= $3",
        )
        .bind(product_id)
        .bind(first)
        .bind(last)
        .fetch_one(&self.pool)
        .await?;
        let n = |i: usize| -> Result<u64> { Ok(r.try_get::<i64, _>(i)?.max(0) as u64) };
        Ok(ServedDay {
            plans: n(0)?,
            download_bytes: n(1)?,
            image_bytes: n(2)?,
        })
    }

    /// Drops rollup days older than [`KEEP_DAYS`] by the database's clock; how many rows.
    pub async fn prune_days(&self) -> Result<u64> {
        let before = day_of(self.now()) - KEEP_DAYS;
        let mut n = 0;
        for table in ["version_days", "served_days"] {
            n += sqlx::query(&format!("DELETE FROM {table} WHERE day < $1"))
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_counts_once_a_day_on_its_last_version() {
        let mut d = VersionDeltas::new();
        let day = 86_400;
        count_checkin(&mut d, 1, None, day + 10, Some("1.0"));
        // Again the same day, same version: nothing; then 2.0 the same day: moves.
        count_checkin(
            &mut d,
            1,
            Some((day + 10, Some("1.0"))),
            day + 20,
            Some("1.0"),
        );
        count_checkin(
            &mut d,
            1,
            Some((day + 20, Some("1.0"))),
            day + 30,
            Some("2.0"),
        );
        // The next day: counted again.
        count_checkin(
            &mut d,
            1,
            Some((day + 30, Some("2.0"))),
            2 * day + 5,
            Some("2.0"),
        );
        let get = |d: &VersionDeltas, day: i64, v: &str| d.get(&(1, day, v.into())).copied();
        assert_eq!(get(&d, 1, "1.0"), Some(0));
        assert_eq!(get(&d, 1, "2.0"), Some(1));
        assert_eq!(get(&d, 2, "2.0"), Some(1));
        assert_eq!(day_of(-1), -1);
    }
}
