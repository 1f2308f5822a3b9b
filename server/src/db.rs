//! The release database: products, releases, channels, stored objects and deltas, plans and
//! upload tokens. SQLite by default (one file in the data folder).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use deltaroot_client::format::{Hash, Plan};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::error::{Error, Result};

/// How many values go in one `IN (…)` list.
const CHUNK: usize = 500;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Db {
    pool: SqlitePool,
}

/// A release as listed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReleaseRow {
    #[serde(skip)]
    pub id: i64,
    pub version: String,
    pub created: i64,
    pub image_bytes: i64,
    pub entries: i64,
    pub published_at: i64,
    pub published_by: String,
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
    pub channel: Option<&'a str>,
}

impl Db {
    /// Opens (creating if needed) the SQLite database at `path` and runs migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Db> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Db { pool })
    }

    /// The connection pool, for tests and tools that inspect the database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn create_token(&self, name: &str, token: &str) -> Result<()> {
        sqlx::query("INSERT INTO tokens (name, token_hash, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    Error::Conflict(format!("a token named {name:?} exists already"))
                }
                e => e.into(),
            })?;
        Ok(())
    }

    /// The name of the token, if it is known.
    pub async fn token_name(&self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM tokens WHERE token_hash = ?")
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn add_object(&self, hash: &Hash, bytes: u64, size: u64) -> Result<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO objects (hash, bytes, size, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(hash.to_string())
        .bind(bytes as i64)
        .bind(size as i64)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn add_delta(
        &self,
        source: &Hash,
        target: &Hash,
        bytes: u64,
        method: u8,
    ) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO deltas (source, target, bytes, method, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(source.to_string())
        .bind(target.to_string())
        .bind(bytes as i64)
        .bind(i64::from(method))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stored sizes of objects, by hash.
    pub async fn object_sizes(&self, hashes: &[Hash]) -> Result<HashMap<Hash, u64>> {
        let mut out = HashMap::new();
        for chunk in hashes.chunks(CHUNK) {
            let sql = format!(
                "SELECT hash, bytes FROM objects WHERE hash IN ({})",
                vec!["?"; chunk.len()].join(",")
            );
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q.bind(h.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let h: String = row.get(0);
                let b: i64 = row.get(1);
                if let Ok(h) = h.parse() {
                    out.insert(h, b as u64);
                }
            }
        }
        Ok(out)
    }

    /// Stored deltas producing any of `targets`: target -> [(source, bytes)].
    pub async fn deltas_to(&self, targets: &[Hash]) -> Result<HashMap<Hash, Vec<(Hash, u64)>>> {
        let mut out: HashMap<Hash, Vec<(Hash, u64)>> = HashMap::new();
        for chunk in targets.chunks(CHUNK) {
            let sql = format!(
                "SELECT source, target, bytes FROM deltas WHERE target IN ({})",
                vec!["?"; chunk.len()].join(",")
            );
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q.bind(h.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let (s, t, b): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
                if let (Ok(s), Ok(t)) = (s.parse(), t.parse()) {
                    out.entry(t).or_default().push((s, b as u64));
                }
            }
        }
        Ok(out)
    }

    /// Stored size of each (source, target) delta.
    pub async fn delta_sizes(&self, pairs: &[(Hash, Hash)]) -> Result<Vec<Option<u64>>> {
        let targets: Vec<Hash> = pairs.iter().map(|p| p.1).collect();
        let by_target = self.deltas_to(&targets).await?;
        Ok(pairs
            .iter()
            .map(|(s, t)| {
                by_target
                    .get(t)
                    .and_then(|v| v.iter().find(|(src, _)| src == s))
                    .map(|(_, b)| *b)
            })
            .collect())
    }

    /// The product's id and public key.
    pub async fn product(&self, name: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT id, public_key FROM products WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn release(&self, product: &str, version: &str) -> Result<Option<ReleaseRow>> {
        let row = sqlx::query(
            "SELECT r.id, r.version, r.created, r.image_bytes, r.entries, r.published_at, r.published_by
             FROM releases r JOIN products p ON p.id = r.product_id
             WHERE p.name = ? AND r.version = ?",
        )
        .bind(product)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(release_row))
    }

    pub async fn releases(&self, product: &str) -> Result<Vec<ReleaseRow>> {
        let rows = sqlx::query(
            "SELECT r.id, r.version, r.created, r.image_bytes, r.entries, r.published_at, r.published_by
             FROM releases r JOIN products p ON p.id = r.product_id
             WHERE p.name = ? ORDER BY r.created DESC, r.id DESC",
        )
        .bind(product)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(release_row).collect())
    }

    /// The manifest bytes and signature of a release.
    pub async fn manifest(&self, release_id: i64) -> Result<(Vec<u8>, Vec<u8>)> {
        let row = sqlx::query("SELECT manifest, signature FROM releases WHERE id = ?")
            .bind(release_id)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// The release a channel points at.
    pub async fn channel(&self, product: &str, channel: &str) -> Result<Option<ReleaseRow>> {
        let row = sqlx::query(
            "SELECT r.id, r.version, r.created, r.image_bytes, r.entries, r.published_at, r.published_by
             FROM channels c JOIN products p ON p.id = c.product_id JOIN releases r ON r.id = c.release_id
             WHERE p.name = ? AND c.name = ?",
        )
        .bind(product)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(release_row))
    }

    pub async fn plan(&self, from: Option<i64>, to: i64) -> Result<Option<Plan>> {
        let row = sqlx::query("SELECT plan FROM plans WHERE from_release = ? AND to_release = ?")
            .bind(from.unwrap_or(0))
            .bind(to)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let text: String = r.get(0);
                Ok(Some(serde_json::from_str(&text).map_err(|e| {
                    Error::BadRequest(format!("stored plan is unreadable: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    pub async fn save_plan(&self, from: Option<i64>, to: i64, plan: &Plan) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO plans (from_release, to_release, plan, download_bytes, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(from.unwrap_or(0))
        .bind(to)
        .bind(serde_json::to_string(plan).expect("plans serialise"))
        .bind(plan.download_bytes as i64)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts a release (creating its product on first publish) and points the channel at
    /// it, all in one transaction: devices see the whole release or none of it.
    pub async fn insert_release(&self, r: &NewRelease<'_>) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let product_id: i64 = match sqlx::query(
            "SELECT id, public_key FROM products WHERE name = ?",
        )
        .bind(r.product)
        .fetch_optional(&mut *tx)
        .await?
        {
            Some(row) => {
                let key: String = row.get(1);
                if key.trim() != r.public_key.trim() {
                    return Err(Error::Forbidden(format!(
                        "product {} is signed by another key",
                        r.product
                    )));
                }
                row.get(0)
            }
            None => sqlx::query(
                "INSERT INTO products (name, public_key, created_at) VALUES (?, ?, ?) RETURNING id",
            )
            .bind(r.product)
            .bind(r.public_key.trim())
            .bind(now())
            .fetch_one(&mut *tx)
            .await?
            .get(0),
        };
        let id: i64 = sqlx::query(
            "INSERT INTO releases (product_id, version, created, manifest, signature, image_bytes, entries, published_at, published_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(product_id)
        .bind(r.version)
        .bind(r.created)
        .bind(r.manifest)
        .bind(r.signature)
        .bind(r.image_bytes)
        .bind(r.entries)
        .bind(now())
        .bind(r.published_by)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => Error::Conflict(format!(
                "product {} already has a release {}",
                r.product, r.version
            )),
            e => e.into(),
        })?
        .get(0);
        if let Some(c) = r.channel {
            sqlx::query(
                "INSERT INTO channels (product_id, name, release_id, updated_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (product_id, name) DO UPDATE SET release_id = excluded.release_id, updated_at = excluded.updated_at",
            )
            .bind(product_id)
            .bind(c)
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }
}

fn release_row(r: sqlx::sqlite::SqliteRow) -> ReleaseRow {
    ReleaseRow {
        id: r.get(0),
        version: r.get(1),
        created: r.get(2),
        image_bytes: r.get(3),
        entries: r.get(4),
        published_at: r.get(5),
        published_by: r.get(6),
    }
}
