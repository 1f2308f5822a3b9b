//! Device check-ins: the last one of each device, written in batches, and the failure
//! reports the rollout watcher reads from them.

use std::collections::HashMap;

use sqlx::Row;

use super::bulk::{self, Col};
use super::daily::{count_checkin, VersionDeltas};
use super::Db;
use crate::error::Result;

text_enum! {
    /// What a device reports of its last update attempt (`result=` of a check).
    pub enum CheckInResult ("result") {
        Ok = "ok",
        Failed = "failed",
        RolledBack = "rolled-back",
    }
}

/// One device poll, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckIn {
    pub product_id: i64,
    pub device_id: String,
    pub channel: String,
    pub current: Option<String>,
    pub result: Option<CheckInResult>,
    pub attempted: Option<String>,
    pub at: i64,
    /// Signed by the device's enrolled key.
    pub signed: bool,
}

/// A row of the `devices` table: the last check-in of one device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRow {
    pub device_id: String,
    pub channel: String,
    pub current: Option<String>,
    pub result: Option<CheckInResult>,
    pub attempted: Option<String>,
    pub seen_at: i64,
}

/// What the database holds of a device before a batch of its check-ins is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Its last check-in: time and version.
    pub previous: Option<(i64, Option<String>)>,
    /// The key it enrolled, as `.pub` text.
    pub key: Option<String>,
}

/// Known devices by product id and device id, looked up by `&str` (a batch's lookups
/// allocate nothing).
#[derive(Debug, Default)]
pub struct KnownDevices(HashMap<i64, HashMap<String, Known>>);

impl KnownDevices {
    /// What is known of `device` of product `product_id`.
    pub fn get(&self, product_id: i64, device: &str) -> Option<&Known> {
        self.0.get(&product_id)?.get(device)
    }

    /// Whether any of the devices enrolled a key.
    pub fn any_key(&self) -> bool {
        self.0
            .values()
            .flat_map(HashMap::values)
            .any(|k| k.key.is_some())
    }

    fn insert(&mut self, product_id: i64, device: String, known: Known) {
        self.0.entry(product_id).or_default().insert(device, known);
    }
}

/// The columns every device query selects, in this order.
const DEVICE_COLS: &str = "device_id, channel, current_version, last_result, attempted, seen_at";

fn device_row(r: &sqlx::any::AnyRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: r.try_get(0)?,
        channel: r.try_get(1)?,
        current: r.try_get(2)?,
        result: r.try_get(3)?,
        attempted: r.try_get(4)?,
        seen_at: r.try_get(5)?,
    })
}

impl Db {
    /// Devices of a product whose last attempt was `version`, seen since `since`, and how
    /// many of them report `failed` or `rolled-back`; with `signed_only`, enrolled devices'
    /// signed reports only.
    pub async fn reports(
        &self,
        product_id: i64,
        version: &str,
        since: i64,
        signed_only: bool,
    ) -> Result<(u64, u64)> {
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN last_result IN ($4, $5) THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM devices WHERE product_id = $1 AND attempted = $2 AND seen_at >= $3 AND last_result IS NOT NULL
                AND (signed = 1 OR $6 = 0)",
        )
        .bind(product_id)
        .bind(version)
        .bind(since)
        .bind(CheckInResult::Failed)
        .bind(CheckInResult::RolledBack)
        .bind(i64::from(signed_only))
        .fetch_one(&self.pool)
        .await?;
        let (n, f): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((n as u64, f as u64))
    }

    /// The last check-in and the enrolled key of each of `devices` (product id, device id)
    /// that has either: one query for a whole batch, read before the batch's transaction so
    /// that the transaction starts with a write (SQLite replicas sharing a file).
    pub async fn known_devices(&self, devices: &[(i64, &str)]) -> Result<KnownDevices> {
        let src = bulk::rows(self.backend, 1, &bulk::DEVICES);
        let sql = format!(
            "SELECT r.product_id, r.device_id, d.seen_at, d.current_version, k.public_key
             FROM {src} r
             LEFT JOIN devices d ON d.product_id = r.product_id AND d.device_id = r.device_id
             LEFT JOIN device_keys k ON k.product_id = r.product_id AND k.device_id = r.device_id
             WHERE d.seen_at IS NOT NULL OR k.public_key IS NOT NULL"
        );
        let mut out = KnownDevices::default();
        for r in sqlx::query(&sql)
            .bind(bulk::json(&devices)?)
            .fetch_all(&self.pool)
            .await?
        {
            let previous = match r.try_get::<Option<i64>, _>(2)? {
                Some(seen) => Some((seen, r.try_get(3)?)),
                None => None,
            };
            let known = Known {
                previous,
                key: r.try_get(4)?,
            };
            out.insert(r.try_get(0)?, r.try_get(1)?, known);
        }
        Ok(out)
    }

    /// Writes a batch of check-ins: the last one of each device wins. The daily version
    /// counts (`version_days`) change in the same transaction, from what `known` (read by
    /// [`Db::known_devices`] for the same devices) says of each device's previous check-in.
    pub async fn record_checkins(&self, batch: &[CheckIn], known: &KnownDevices) -> Result<()> {
        let mut last: HashMap<(i64, &str), &CheckIn> = HashMap::new();
        for c in batch {
            last.insert((c.product_id, c.device_id.as_str()), c);
        }
        let mut rows: Vec<&CheckIn> = last.into_values().collect();
        // In key order, each insert lands next to the last one in the B-tree (SQLite: ~20 %
        // less CPU for a batch of random device ids).
        rows.sort_unstable_by(|a, b| {
            (a.product_id, &a.device_id).cmp(&(b.product_id, &b.device_id))
        });
        let mut deltas = VersionDeltas::new();
        for c in &rows {
            let before = known
                .get(c.product_id, &c.device_id)
                .and_then(|k| k.previous.as_ref());
            count_checkin(
                &mut deltas,
                c.product_id,
                before.map(|(at, v)| (*at, v.as_deref())),
                c.at,
                c.current.as_deref(),
            );
        }
        let mut tx = self.pool.begin().await?;
        let src = bulk::rows(
            self.backend,
            1,
            &[
                ("product_id", Col::Int),
                ("device_id", Col::Text),
                ("channel", Col::Text),
                ("current_version", Col::Text),
                ("last_result", Col::Text),
                ("attempted", Col::Text),
                ("seen_at", Col::Int),
                ("signed", Col::Int),
            ],
        );
        // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the INSERT.
        let sql = format!(
            "INSERT INTO devices (product_id, device_id, channel, current_version, last_result, attempted, seen_at, signed)
             SELECT product_id, device_id, channel, current_version, last_result, attempted, seen_at, signed
             FROM {src} AS r WHERE true
             ON CONFLICT (product_id, device_id) DO UPDATE SET channel = excluded.channel,
                current_version = excluded.current_version, last_result = excluded.last_result,
                attempted = excluded.attempted, seen_at = excluded.seen_at, signed = excluded.signed"
        );
        let values: Vec<_> = rows
            .iter()
            .map(|c| {
                (
                    c.product_id,
                    &c.device_id,
                    &c.channel,
                    &c.current,
                    c.result.map(|r| r.as_str()),
                    &c.attempted,
                    c.at,
                    i64::from(c.signed),
                )
            })
            .collect();
        sqlx::query(&sql)
            .bind(bulk::json(&values)?)
            .execute(&mut *tx)
            .await?;
        Db::add_version_days(&mut tx, deltas).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last check-in of one device.
    pub async fn device(&self, product_id: i64, device_id: &str) -> Result<Option<DeviceRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE product_id = $1 AND device_id = $2"
        ))
        .bind(product_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(device_row).transpose()
    }

    /// How many of a product's devices run each version (`None`: nothing installed yet),
    /// most first.
    pub async fn version_counts(&self, product_id: i64) -> Result<Vec<(Option<String>, u64)>> {
        let rows = sqlx::query(
            "SELECT current_version, COUNT(*) FROM devices WHERE product_id = $1
             GROUP BY current_version ORDER BY COUNT(*) DESC, current_version",
        )
        .bind(product_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(1)?;
                Ok((r.try_get(0)?, n.max(0) as u64))
            })
            .collect()
    }

    /// A page of a product's devices by id: at most `limit` after `after`, only those whose
    /// last report is `result` when given.
    pub async fn devices(
        &self,
        product_id: i64,
        after: Option<&str>,
        result: Option<CheckInResult>,
        limit: i64,
    ) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE product_id = $1 AND device_id > $2
               AND ($3 = '' OR last_result = $3) ORDER BY device_id LIMIT $4"
        ))
        .bind(product_id)
        .bind(after.unwrap_or(""))
        .bind(result.map(CheckInResult::as_str).unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_row).collect()
    }

    /// Forgets devices whose last check-in is older than `before`; how many. It reads the
    /// whole table (migration 0014), once per housekeeping interval.
    pub async fn prune_devices(&self, before: i64) -> Result<u64> {
        let n = sqlx::query("DELETE FROM devices WHERE seen_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// How many devices are known, over every product.
    pub async fn device_total(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM devices")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(n as u64)
    }

    /// Devices per (channel, current version) of a product.
    pub async fn device_counts(
        &self,
        product_id: i64,
    ) -> Result<Vec<(String, Option<String>, u64)>> {
        let rows = sqlx::query(
            "SELECT channel, current_version, COUNT(*) FROM devices WHERE product_id = $1
             GROUP BY channel, current_version ORDER BY channel, current_version",
        )
        .bind(product_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? as u64)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_the_wire_names() {
        let names: Vec<&str> = CheckInResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, deltaroot_format::api::RESULTS);
        let e = "maybe".parse::<CheckInResult>().unwrap_err().to_string();
        assert_eq!(e, "result \"maybe\" is not one of ok, failed, rolled-back");
    }
}
