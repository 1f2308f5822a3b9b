//! Download plans by release pair, and their sizes.

use deltaroot_format::Plan;
use sqlx::Row;

use super::Db;
use crate::error::{Error, Result};

impl Db {
    /// Every stored plan, for the orphan sweep (what plans fetch stays stored).
    pub async fn all_plans(&self) -> Result<Vec<Plan>> {
        let rows = sqlx::query("SELECT from_release, to_release, plan FROM plans")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (from, to, text): (i64, i64, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            out.push(serde_json::from_str(&text).map_err(|e| {
                Error::Corrupt(format!("stored plan {from} -> {to} is unreadable: {e}"))
            })?);
        }
        Ok(out)
    }

    pub async fn plan(&self, from: Option<i64>, to: i64) -> Result<Option<Plan>> {
        let row = sqlx::query("SELECT plan FROM plans WHERE from_release = $1 AND to_release = $2")
            .bind(from.unwrap_or(0))
            .bind(to)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let text: String = r.try_get(0)?;
                Ok(Some(serde_json::from_str(&text).map_err(|e| {
                    Error::Corrupt(format!("stored plan {from:?} -> {to} is unreadable: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// The stored plans ending at release `to`: (from release id, `None` for a device with
    /// nothing installed; download bytes), smallest download first.
    pub async fn plans_to(&self, to: i64) -> Result<Vec<(Option<i64>, u64)>> {
        let rows = sqlx::query(
            "SELECT from_release, download_bytes FROM plans WHERE to_release = $1
             ORDER BY download_bytes, from_release",
        )
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let from: i64 = r.try_get(0)?;
                let bytes: i64 = r.try_get(1)?;
                Ok(((from != 0).then_some(from), bytes.max(0) as u64))
            })
            .collect()
    }

    /// The download size of a stored plan.
    pub async fn plan_size(&self, from: Option<i64>, to: i64) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT download_bytes FROM plans WHERE from_release = $1 AND to_release = $2",
        )
        .bind(from.unwrap_or(0))
        .bind(to)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>(0)? as u64),
            None => None,
        })
    }

    pub async fn save_plan(&self, from: Option<i64>, to: i64, plan: &Plan) -> Result<()> {
        sqlx::query(
            "INSERT INTO plans (from_release, to_release, plan, download_bytes, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (from_release, to_release) DO UPDATE SET plan = excluded.plan,
                download_bytes = excluded.download_bytes, created_at = excluded.created_at",
        )
        .bind(from.unwrap_or(0))
        .bind(to)
        .bind(serde_json::to_string(plan).expect("plans serialise"))
        .bind(plan.download_bytes as i64)
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
