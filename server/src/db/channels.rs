//! Channels, their rollouts and signed downgrades, and the audit log of every change.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::releases::{release_row, RELEASE_COLS};

use super::{audit, Db, ReleaseRow, Tx};
use crate::error::Result;

/// A channel's state: the release it points at, pause, rollback statement, rollout.
#[derive(Clone, Debug)]
pub struct ChannelRow {
    pub release_id: i64,
    pub paused: bool,
    /// The signed downgrade in force (statement bytes, signature) since a rollback.
    pub downgrade: Option<(Vec<u8>, Vec<u8>)>,
    pub rollout: Option<Rollout>,
    pub updated_at: i64,
    /// Raised by every change: what signed answers order channel states by.
    pub serial: i64,
}

text_enum! {
    /// Where a rollout is: going out, stopped on failures (devices outside get the release
    /// before), or replaced by a later promotion or rollback.
    pub enum RolloutState ("rollout state") {
        Active = "active",
        Stopped = "stopped",
        Superseded = "superseded",
    }
}

/// Parts per million of a share between 0 and 1: how failure-rate limits are stored (an
/// integer binds the same way on both backends, with or without a value).
const PPM: f64 = 1_000_000.0;

fn to_ppm(share: Option<f64>) -> Option<i64> {
    share
        .filter(|v| v.is_finite())
        .map(|v| (v.clamp(0.0, 1.0) * PPM).round() as i64)
}

/// A promotion going out in waves.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub id: i64,
    pub release_id: i64,
    /// What devices outside the wave are offered (the channel's release before).
    pub previous_release_id: Option<i64>,
    pub floor_release_id: Option<i64>,
    pub start_percent: f64,
    pub step_percent: f64,
    pub step_secs: i64,
    /// Share (0 to 1, to a millionth) of reporting devices that may fail before it stops.
    pub max_failure_rate: Option<f64>,
    pub min_reports: i64,
    /// When the share was last set (steps count from here).
    pub started_at: i64,
    /// When the rollout was created (failure reports count from here).
    pub created_at: i64,
    pub state: RolloutState,
    pub reason: Option<String>,
    /// The egress budget: bytes per clock hour the rollout's admissions may charge.
    pub max_bytes_per_hour: Option<i64>,
    /// The failure-rate stop counts signed reports only (enrolled devices).
    pub signed_reports_only: bool,
}

impl Rollout {
    /// The share of devices offered the release at `now`, 0 to 100.
    pub fn percent_at(&self, now: i64) -> f64 {
        let mut p = self.start_percent;
        if self.step_secs > 0 && self.step_percent > 0.0 && now > self.started_at {
            let steps = ((now - self.started_at) / self.step_secs) as f64;
            p += steps * self.step_percent;
        }
        p.clamp(0.0, 100.0)
    }
}

/// How a promotion goes out.
#[derive(Clone, Debug)]
pub struct NewRollout {
    pub release_id: i64,
    pub version: String,
    pub floor_release_id: Option<i64>,
    pub floor: Option<String>,
    pub percent: f64,
    pub step_percent: f64,
    pub step_secs: i64,
    pub max_failure_rate: Option<f64>,
    pub min_reports: i64,
    pub max_bytes_per_hour: Option<i64>,
    pub signed_reports_only: bool,
}

impl NewRollout {
    /// Everything at once.
    pub fn whole(release_id: i64, version: &str) -> NewRollout {
        NewRollout {
            release_id,
            version: version.to_string(),
            floor_release_id: None,
            floor: None,
            percent: 100.0,
            step_percent: 0.0,
            step_secs: 0,
            max_failure_rate: None,
            min_reports: 10,
            max_bytes_per_hour: None,
            signed_reports_only: false,
        }
    }
}

/// A change to a rollout's waves after it started: `None` keeps the value. A new share or
/// new steps restart a stopped rollout and count steps from the change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutChange {
    pub percent: Option<f64>,
    pub step_percent: Option<f64>,
    pub step_secs: Option<i64>,
    pub max_failure_rate: Option<f64>,
    pub min_reports: Option<i64>,
    /// `Some(None)` removes the egress budget.
    pub max_bytes_per_hour: Option<Option<i64>>,
}

/// An audit line.
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub at: i64,
    pub who: String,
    pub product: String,
    pub channel: Option<String>,
    pub action: String,
    pub detail: String,
}

pub(super) const ROLLOUT_COLS: &str = "ro.id, ro.release_id, ro.previous_release_id, ro.floor_release_id, ro.start_percent, \
     ro.step_percent, ro.step_secs, ro.max_failure_ppm, ro.min_reports, ro.started_at, ro.created_at, ro.state, ro.reason, \
     ro.max_bytes_per_hour, ro.signed_reports_only";

pub(super) fn rollout_row(r: &AnyRow, at: usize) -> Result<Option<Rollout>> {
    let id: Option<i64> = r.try_get(at)?;
    let Some(id) = id else { return Ok(None) };
    Ok(Some(Rollout {
        id,
        release_id: r.try_get(at + 1)?,
        previous_release_id: r.try_get(at + 2)?,
        floor_release_id: r.try_get(at + 3)?,
        start_percent: r.try_get(at + 4)?,
        step_percent: r.try_get(at + 5)?,
        step_secs: r.try_get(at + 6)?,
        max_failure_rate: r
            .try_get::<Option<i64>, _>(at + 7)?
            .map(|ppm| ppm as f64 / PPM),
        min_reports: r.try_get(at + 8)?,
        started_at: r.try_get(at + 9)?,
        created_at: r.try_get(at + 10)?,
        state: r.try_get(at + 11)?,
        reason: r.try_get(at + 12)?,
        max_bytes_per_hour: r.try_get(at + 13)?,
        signed_reports_only: r.try_get::<i64, _>(at + 14)? != 0,
    }))
}

impl Db {
    /// The release a channel points at.
    pub async fn channel(&self, product: &str, channel: &str) -> Result<Option<ReleaseRow>> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLS} FROM channels c JOIN products p ON p.id = c.product_id
             JOIN releases r ON r.id = c.release_id WHERE p.name = $1 AND c.name = $2"
        ))
        .bind(product)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(release_row).transpose()
    }

    /// A channel's whole state.
    pub async fn channel_state(
        &self,
        product_id: i64,
        channel: &str,
    ) -> Result<Option<ChannelRow>> {
        let row = sqlx::query(&format!(
            "SELECT c.release_id, c.paused, c.downgrade, c.downgrade_sig, c.updated_at, c.serial, {ROLLOUT_COLS}
             FROM channels c LEFT JOIN rollouts ro ON ro.id = c.rollout_id
             WHERE c.product_id = $1 AND c.name = $2"
        ))
        .bind(product_id)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let statement: Option<Vec<u8>> = r.try_get(2)?;
        let sig: Option<Vec<u8>> = r.try_get(3)?;
        Ok(Some(ChannelRow {
            release_id: r.try_get(0)?,
            paused: r.try_get::<i64, _>(1)? != 0,
            downgrade: statement.zip(sig),
            updated_at: r.try_get(4)?,
            serial: r.try_get(5)?,
            rollout: rollout_row(&r, 6)?,
        }))
    }

    /// The names of a product's channels.
    pub async fn channel_names(&self, product_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM channels WHERE product_id = $1 ORDER BY name")
            .bind(product_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    /// Points `channel` at a release, at once or in waves; the rollout before it ends.
    pub async fn promote(
        &self,
        product_id: i64,
        product: &str,
        channel: &str,
        rollout: &NewRollout,
        who: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        promote_in(
            &mut tx,
            self.now(),
            product_id,
            product,
            channel,
            rollout,
            who,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pauses or resumes a channel. `false` when the channel does not exist.
    pub async fn set_paused(
        &self,
        product_id: i64,
        product: &str,
        channel: &str,
        paused: bool,
        who: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE channels SET paused = $1, updated_at = $2, serial = serial + 1 WHERE product_id = $3 AND name = $4",
        )
        .bind(i64::from(paused))
        .bind(self.now())
        .bind(product_id)
        .bind(channel)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        audit(
            &mut tx,
            self.now(),
            who,
            product,
            Some(channel),
            if paused { "pause" } else { "resume" },
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Points a channel at an older release with the operator's signed statement; the
    /// rollout in progress ends.
    #[allow(clippy::too_many_arguments)]
    pub async fn rollback(
        &self,
        product_id: i64,
        product: &str,
        channel: &str,
        release_id: i64,
        version: &str,
        statement: &[u8],
        signature: &[u8],
        who: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let t = self.now();
        sqlx::query(
            "UPDATE rollouts SET state = $3, reason = 'rolled back' WHERE id IN
               (SELECT rollout_id FROM channels WHERE product_id = $1 AND name = $2) AND state <> $3",
        )
        .bind(product_id)
        .bind(channel)
        .bind(RolloutState::Superseded)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO channels (product_id, name, release_id, updated_at, paused, downgrade, downgrade_sig, rollout_id)
             VALUES ($1, $2, $3, $4, 0, $5, $6, NULL)
             ON CONFLICT (product_id, name) DO UPDATE SET release_id = excluded.release_id,
                updated_at = excluded.updated_at, serial = channels.serial + 1, paused = 0, downgrade = excluded.downgrade,
                downgrade_sig = excluded.downgrade_sig, rollout_id = NULL",
        )
        .bind(product_id)
        .bind(channel)
        .bind(release_id)
        .bind(t)
        .bind(statement.to_vec())
        .bind(signature.to_vec())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            self.now(),
            who,
            product,
            Some(channel),
            "rollback",
            serde_json::json!({ "version": version }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes the waves of the channel's rollout (`change`'s `None` fields keep their
    /// value). `false` when the channel has no rollout.
    pub async fn change_rollout(
        &self,
        product_id: i64,
        product: &str,
        channel: &str,
        change: &RolloutChange,
        who: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let t = self.now();
        // A write first: SQLite then takes its write lock now (waiting for the check-in
        // writer's if need be) instead of failing at the first write after a read, and
        // PostgreSQL holds the channel's row until the end, so two changes do not interleave.
        sqlx::query("UPDATE channels SET updated_at = $1, serial = serial + 1 WHERE product_id = $2 AND name = $3")
            .bind(t)
            .bind(product_id)
            .bind(channel)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLS} FROM channels c JOIN rollouts ro ON ro.id = c.rollout_id
             WHERE c.product_id = $1 AND c.name = $2"
        ))
        .bind(product_id)
        .bind(channel)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(ro) = row
            .as_ref()
            .map(|r| rollout_row(r, 0))
            .transpose()?
            .flatten()
        else {
            return Ok(false);
        };
        // New waves count from now, from the share in force now.
        let rewaved =
            change.percent.is_some() || change.step_percent.is_some() || change.step_secs.is_some();
        let (start, started_at, state) = if rewaved {
            let now_share = match ro.state {
                RolloutState::Stopped => 0.0,
                _ => ro.percent_at(t),
            };
            (change.percent.unwrap_or(now_share), t, RolloutState::Active)
        } else {
            (ro.start_percent, ro.started_at, ro.state)
        };
        let ppm = to_ppm(change.max_failure_rate.or(ro.max_failure_rate));
        let budget = change.max_bytes_per_hour.unwrap_or(ro.max_bytes_per_hour);
        sqlx::query(
            "UPDATE rollouts SET start_percent = $1, step_percent = $2, step_secs = $3,
                max_failure_ppm = $4, max_failure_rate = CAST($5 AS DOUBLE PRECISION) / 1000000,
                min_reports = $6, max_bytes_per_hour = $7, started_at = $8, state = $9,
                reason = CASE WHEN $10 = 1 THEN NULL ELSE reason END
             WHERE id = $11",
        )
        .bind(start)
        .bind(change.step_percent.unwrap_or(ro.step_percent))
        .bind(change.step_secs.unwrap_or(ro.step_secs))
        .bind(ppm)
        .bind(ppm)
        .bind(change.min_reports.unwrap_or(ro.min_reports))
        .bind(budget)
        .bind(started_at)
        .bind(state)
        .bind(i64::from(rewaved))
        .bind(ro.id)
        .execute(&mut *tx)
        .await?;
        let mut detail = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            detail.insert(k.to_string(), v);
        };
        if let Some(v) = change.percent {
            put("percent", v.into());
        }
        if let Some(v) = change.step_percent {
            put("step_percent", v.into());
        }
        if let Some(v) = change.step_secs {
            put("step_secs", v.into());
        }
        if let Some(v) = change.max_failure_rate {
            put("max_failure_rate", v.into());
        }
        if let Some(v) = change.min_reports {
            put("min_reports", v.into());
        }
        if let Some(v) = change.max_bytes_per_hour {
            put("max_bytes_per_hour", v.into());
        }
        audit(
            &mut tx,
            t,
            who,
            product,
            Some(channel),
            "rollout",
            serde_json::Value::Object(detail),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stops an active rollout; `false` if it was not active (another replica was first).
    pub async fn stop_rollout(
        &self,
        rollout_id: i64,
        product: &str,
        channel: &str,
        reason: &str,
        detail: serde_json::Value,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n =
            sqlx::query("UPDATE rollouts SET state = $3, reason = $1 WHERE id = $2 AND state = $4")
                .bind(reason)
                .bind(rollout_id)
                .bind(RolloutState::Stopped)
                .bind(RolloutState::Active)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        // What devices are offered changed: answers from before are older now.
        sqlx::query("UPDATE channels SET serial = serial + 1 WHERE rollout_id = $1")
            .bind(rollout_id)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            self.now(),
            "server",
            product,
            Some(channel),
            "stop",
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Active rollouts that stop on failures: (product, channel, rollout, target version).
    pub async fn watched_rollouts(&self) -> Result<Vec<(i64, String, String, Rollout, String)>> {
        let rows = sqlx::query(&format!(
            "SELECT p.id, p.name, c.name, r.version, {ROLLOUT_COLS}
             FROM channels c JOIN products p ON p.id = c.product_id
             JOIN rollouts ro ON ro.id = c.rollout_id JOIN releases r ON r.id = ro.release_id
             WHERE ro.state = $1 AND ro.max_failure_ppm IS NOT NULL"
        ))
        .bind(RolloutState::Active)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            if let Some(ro) = rollout_row(r, 4)? {
                out.push((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    ro,
                    r.try_get(3)?,
                ));
            }
        }
        Ok(out)
    }

    /// The newest audit lines of a product.
    pub async fn audit(&self, product: &str, limit: i64) -> Result<Vec<AuditRow>> {
        self.audit_where(Some(product), None, None, limit).await
    }

    /// The newest audit lines, of one product, by one operator, of one action when given.
    pub async fn audit_where(
        &self,
        product: Option<&str>,
        who: Option<&str>,
        action: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT at, who, product, channel, action, detail FROM audit
             WHERE ($1 = '' OR product = $1) AND ($2 = '' OR who = $2) AND ($3 = '' OR action = $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(product.unwrap_or(""))
        .bind(who.unwrap_or(""))
        .bind(action.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    at: r.try_get(0)?,
                    who: r.try_get(1)?,
                    product: r.try_get(2)?,
                    channel: r.try_get(3)?,
                    action: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Every channel with its rollout, for `/metrics`: (product, channel, paused, rollout).
    pub async fn all_channels(&self) -> Result<Vec<(String, String, bool, Option<Rollout>)>> {
        let rows = sqlx::query(&format!(
            "SELECT p.name, c.name, c.paused, {ROLLOUT_COLS}
             FROM channels c JOIN products p ON p.id = c.product_id
             LEFT JOIN rollouts ro ON ro.id = c.rollout_id ORDER BY p.name, c.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get::<i64, _>(2)? != 0,
                    rollout_row(r, 3)?,
                ))
            })
            .collect()
    }
}

pub(super) async fn promote_in(
    tx: &mut Tx<'_>,
    t: i64,
    product_id: i64,
    product: &str,
    channel: &str,
    r: &NewRollout,
    who: &str,
) -> Result<()> {
    // A write first (see `change_rollout`): the channel's row, if there is one.
    sqlx::query("UPDATE channels SET updated_at = $1, serial = serial + 1 WHERE product_id = $2 AND name = $3")
        .bind(t)
        .bind(product_id)
        .bind(channel)
        .execute(&mut **tx)
        .await?;
    let previous: Option<i64> =
        sqlx::query("SELECT release_id FROM channels WHERE product_id = $1 AND name = $2")
            .bind(product_id)
            .bind(channel)
            .fetch_optional(&mut **tx)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
    let previous = previous.filter(|p| *p != r.release_id);
    sqlx::query(
        "UPDATE rollouts SET state = $3, reason = 'promoted again' WHERE id IN
           (SELECT rollout_id FROM channels WHERE product_id = $1 AND name = $2) AND state <> $3",
    )
    .bind(product_id)
    .bind(channel)
    .bind(RolloutState::Superseded)
    .execute(&mut **tx)
    .await?;
    // The limit is bound as an integer (parts per million): sqlx's Any driver sends a NULL
    // float to PostgreSQL as a `real` parameter, which the cached statement then keeps and a
    // later `double precision` value does not fit. The old REAL column is written too, from
    // the same integer, for replicas that still read it.
    let ppm = to_ppm(r.max_failure_rate);
    let rollout_id: i64 = sqlx::query(
        "INSERT INTO rollouts (product_id, channel, release_id, previous_release_id, floor_release_id,
            start_percent, step_percent, step_secs, max_failure_ppm, max_failure_rate, min_reports,
            started_at, created_at, state, reason, created_by, max_bytes_per_hour, signed_reports_only)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CAST($10 AS DOUBLE PRECISION) / 1000000, $11,
            $12, $13, $14, NULL, $15, $16, $17) RETURNING id",
    )
    .bind(product_id)
    .bind(channel)
    .bind(r.release_id)
    .bind(previous)
    .bind(r.floor_release_id)
    .bind(r.percent)
    .bind(r.step_percent)
    .bind(r.step_secs)
    .bind(ppm)
    .bind(ppm)
    .bind(r.min_reports)
    .bind(t)
    .bind(t)
    .bind(RolloutState::Active)
    .bind(who)
    .bind(r.max_bytes_per_hour)
    .bind(i64::from(r.signed_reports_only))
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    sqlx::query(
        "INSERT INTO channels (product_id, name, release_id, updated_at, paused, downgrade, downgrade_sig, rollout_id)
         VALUES ($1, $2, $3, $4, 0, NULL, NULL, $5)
         ON CONFLICT (product_id, name) DO UPDATE SET release_id = excluded.release_id,
            updated_at = excluded.updated_at, serial = channels.serial + 1, paused = 0, downgrade = NULL, downgrade_sig = NULL,
            rollout_id = excluded.rollout_id",
    )
    .bind(product_id)
    .bind(channel)
    .bind(r.release_id)
    .bind(t)
    .bind(rollout_id)
    .execute(&mut **tx)
    .await?;
    audit(
        tx,
        t,
        who,
        product,
        Some(channel),
        "promote",
        serde_json::json!({
            "version": r.version,
            "percent": r.percent,
            "step_percent": r.step_percent,
            "step_secs": r.step_secs,
            "floor": r.floor,
            "max_failure_rate": r.max_failure_rate,
            "min_reports": r.min_reports,
            "max_bytes_per_hour": r.max_bytes_per_hour,
            "signed_reports_only": r.signed_reports_only,
        }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_raise_the_share_and_stop_at_100() {
        let r = Rollout {
            id: 1,
            release_id: 1,
            previous_release_id: None,
            floor_release_id: None,
            start_percent: 10.0,
            step_percent: 20.0,
            step_secs: 60,
            max_failure_rate: None,
            min_reports: 10,
            started_at: 1000,
            created_at: 1000,
            state: RolloutState::Active,
            reason: None,
            max_bytes_per_hour: None,
            signed_reports_only: false,
        };
        assert_eq!(r.percent_at(999), 10.0);
        assert_eq!(r.percent_at(1059), 10.0);
        assert_eq!(r.percent_at(1060), 30.0);
        assert_eq!(r.percent_at(1000 + 60 * 10), 100.0);
    }

    #[test]
    fn failure_limits_are_parts_per_million() {
        assert_eq!(to_ppm(Some(0.3)), Some(300_000));
        assert_eq!(to_ppm(Some(1.0)), Some(1_000_000));
        assert_eq!(to_ppm(Some(f64::NAN)), None);
        assert_eq!(to_ppm(None), None);
        assert_eq!(300_000.0 / PPM, 0.3);
    }

    #[test]
    fn states_read_back_their_names() {
        for s in RolloutState::ALL {
            assert_eq!(s.as_str().parse::<RolloutState>().unwrap(), *s);
        }
        assert!("paused".parse::<RolloutState>().is_err());
    }
}
