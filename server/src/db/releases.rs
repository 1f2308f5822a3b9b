//! Products and their releases.

use deltaroot_format::Hash;
use deltaroot_format::{Method, Name};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::channels::promote_in;
use super::{audit, stored_name, unique, Db, NewRollout};
use crate::error::{Error, Result};

/// A release as listed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReleaseRow {
    #[serde(skip)]
    pub id: i64,
    pub version: Name,
    pub created: i64,
    pub image_bytes: i64,
    pub entries: i64,
    pub published_at: i64,
    pub published_by: String,
    /// Delta methods its publisher never sends, which the server's builder does not use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skip_methods: Vec<Method>,
}

/// What a new release brings, written in one transaction.
pub struct NewRelease<'a> {
    pub product: &'a str,
    pub public_key: &'a str,
    pub version: &'a str,
    pub created: i64,
    pub manifest: &'a [u8],
    pub signature: &'a [u8],
    pub image_bytes: i64,
    pub entries: i64,
    pub published_by: &'a str,
    pub skip_methods: &'a [Method],
    pub channel: Option<&'a str>,
    /// The share of the channel's devices offered the release at first (0-100).
    pub percent: f64,
    /// Packs made for devices coming from this release (by id), tried in order.
    pub packs: Option<(i64, &'a [Hash])>,
}

pub(super) const RELEASE_COLS: &str =
    "r.id, r.version, r.created, r.image_bytes, r.entries, r.published_at, r.published_by, r.skip_methods";

pub(super) fn release_row(r: &AnyRow) -> Result<ReleaseRow> {
    Ok(ReleaseRow {
        id: r.try_get(0)?,
        version: stored_name("version", r.try_get(1)?)?,
        created: r.try_get(2)?,
        image_bytes: r.try_get(3)?,
        entries: r.try_get(4)?,
        published_at: r.try_get(5)?,
        published_by: r.try_get(6)?,
        // A name this build does not know (written by a newer replica) names a method it
        // cannot build either.
        skip_methods: r
            .try_get::<String, _>(7)?
            .split_whitespace()
            .filter_map(Method::from_name)
            .collect(),
    })
}

impl Db {
    /// Every product's name, in order.
    pub async fn product_names(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM products ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The product's id and public key.
    pub async fn product(&self, name: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT id, public_key FROM products WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    pub async fn release(&self, product: &str, version: &str) -> Result<Option<ReleaseRow>> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLS} FROM releases r JOIN products p ON p.id = r.product_id
             WHERE p.name = $1 AND r.version = $2"
        ))
        .bind(product)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(release_row).transpose()
    }

    /// A product's releases, newest `created` first.
    pub async fn releases(&self, product: &str) -> Result<Vec<ReleaseRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RELEASE_COLS} FROM releases r JOIN products p ON p.id = r.product_id
             WHERE p.name = $1 ORDER BY r.created DESC, r.id DESC"
        ))
        .bind(product)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_row).collect()
    }

    /// Every release's manifest and signature with its product's name and key, for the
    /// orphan sweep (what a release holds stays stored).
    pub async fn all_manifests(&self) -> Result<Vec<(String, String, Vec<u8>, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT p.name, p.public_key, r.manifest, r.signature FROM releases r
             JOIN products p ON p.id = r.product_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    /// The manifest bytes and signature of a release.
    pub async fn manifest(&self, release_id: i64) -> Result<(Vec<u8>, Vec<u8>)> {
        let row = sqlx::query("SELECT manifest, signature FROM releases WHERE id = $1")
            .bind(release_id)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Inserts a release (creating its product on first publish) and, when a channel is
    /// named, points it at the release (a promotion to every device), all in one
    /// transaction: devices see the whole release or none of it.
    pub async fn insert_release(&self, r: &NewRelease<'_>) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query("SELECT id, public_key FROM products WHERE name = $1")
            .bind(r.product)
            .fetch_optional(&mut *tx)
            .await?;
        let product_id: i64 = match existing {
            Some(row) => {
                let key: String = row.try_get(1)?;
                if key.trim() != r.public_key.trim() {
                    return Err(Error::Forbidden(format!(
                        "product {} is signed by another key",
                        r.product
                    )));
                }
                row.try_get(0)?
            }
            None => sqlx::query(
                "INSERT INTO products (name, public_key, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(r.product)
            .bind(r.public_key.trim())
            .bind(self.now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                if unique(&e) {
                    Error::Conflict(format!(
                        "product {} was created at the same time; publish again",
                        r.product
                    ))
                } else {
                    e.into()
                }
            })?
            .try_get(0)?,
        };
        let id: i64 = sqlx::query(
            "INSERT INTO releases (product_id, version, created, manifest, signature, image_bytes, entries, published_at, published_by, skip_methods)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(product_id)
        .bind(r.version)
        .bind(r.created)
        .bind(r.manifest.to_vec())
        .bind(r.signature.to_vec())
        .bind(r.image_bytes)
        .bind(r.entries)
        .bind(self.now())
        .bind(r.published_by)
        .bind(
            r.skip_methods
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(" "),
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if unique(&e) {
                Error::Conflict(format!(
                    "product {} already has a release {}",
                    r.product, r.version
                ))
            } else {
                e.into()
            }
        })?
        .try_get(0)?;
        audit(
            &mut tx,
            self.now(),
            r.published_by,
            r.product,
            r.channel,
            "publish",
            serde_json::json!({ "version": r.version }),
        )
        .await?;
        if let Some((from, packs)) = r.packs {
            for (position, pack) in packs.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO plan_packs (from_release, to_release, position, pack) VALUES ($1, $2, $3, $4)",
                )
                .bind(from)
                .bind(id)
                .bind(position as i64)
                .bind(pack.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(c) = r.channel {
            promote_in(
                &mut tx,
                self.now(),
                product_id,
                r.product,
                c,
                &NewRollout {
                    percent: r.percent,
                    ..NewRollout::whole(id, r.version)
                },
                r.published_by,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }
}
