//! The release database: products, releases, channels and their rollouts, stored objects and
//! deltas, plans, upload tokens, device check-ins and the audit log.
//!
//! One code path for both backends through sqlx's `Any` driver: SQLite (one file in the data
//! folder, the default) and PostgreSQL (`--database postgres://…`, for several replicas).
//! Every statement is written in the SQL both understand (`$n` parameters, `ON CONFLICT`,
//! `RETURNING`); migrations live in `../migrations/{sqlite,postgres}`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use deltaroot_client::format::{EntryKind, Hash, Method, PackIndex, Plan};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;
use sqlx::{Executor, Row};

use crate::error::{Error, Result};

/// How many values go in one `IN (…)` list.
const CHUNK: usize = 500;
/// Devices written by one `INSERT` of a check-in batch (7 parameters each). sqlx looks up
/// SQLite parameters by name, which costs time quadratic in their number: at 100 rows that
/// lookup was a third of the check-in writer's time under the load benchmark.
const CHECKIN_ROWS: usize = 20;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The URL without its password, for messages.
    shown: String,
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
    /// Packs made for devices coming from this release (by id), tried in order.
    pub packs: Option<(i64, &'a [Hash])>,
}

/// A channel's state: the release it points at, pause, rollback statement, rollout.
#[derive(Clone, Debug)]
pub struct ChannelRow {
    pub release_id: i64,
    pub paused: bool,
    /// The signed downgrade in force (statement bytes, signature) since a rollback.
    pub downgrade: Option<(Vec<u8>, Vec<u8>)>,
    pub rollout: Option<Rollout>,
    pub updated_at: i64,
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
    pub max_failure_rate: Option<f64>,
    pub min_reports: i64,
    /// When the share was last set (steps count from here).
    pub started_at: i64,
    /// When the rollout was created (failure reports count from here).
    pub created_at: i64,
    /// `active`, `stopped` or `superseded`.
    pub state: String,
    pub reason: Option<String>,
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
        }
    }
}

/// One device poll, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckIn {
    pub product_id: i64,
    pub device_id: String,
    pub channel: String,
    pub current: Option<String>,
    pub result: Option<String>,
    pub attempted: Option<String>,
    pub at: i64,
}

/// A row of the `devices` table: the last check-in of one device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRow {
    pub device_id: String,
    pub channel: String,
    pub current: Option<String>,
    pub result: Option<String>,
    pub attempted: Option<String>,
    pub seen_at: i64,
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

fn unique(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// `$first, $first+1, …` for `n` values.
fn params(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

const RELEASE_COLS: &str =
    "r.id, r.version, r.created, r.image_bytes, r.entries, r.published_at, r.published_by, r.skip_methods";

fn release_row(r: &AnyRow) -> Result<ReleaseRow> {
    Ok(ReleaseRow {
        id: r.try_get(0)?,
        version: r.try_get(1)?,
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

const ROLLOUT_COLS: &str = "ro.id, ro.release_id, ro.previous_release_id, ro.floor_release_id, ro.start_percent, \
     ro.step_percent, ro.step_secs, ro.max_failure_rate, ro.min_reports, ro.started_at, ro.created_at, ro.state, ro.reason";

fn rollout_row(r: &AnyRow, at: usize) -> Result<Option<Rollout>> {
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
        max_failure_rate: r.try_get(at + 7)?,
        min_reports: r.try_get(at + 8)?,
        started_at: r.try_get(at + 9)?,
        created_at: r.try_get(at + 10)?,
        state: r.try_get(at + 11)?,
        reason: r.try_get(at + 12)?,
    }))
}

/// Hides the password of a database URL.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Opens (creating if needed) the SQLite database at `path` and runs migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Db> {
        Db::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens `sqlite://…` or `postgres://…` and runs that backend's migrations.
    pub async fn open(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let shown = shown(url);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::BadConfig(format!(
                "database {shown}: expected sqlite://PATH or postgres://…"
            )));
        };
        let connect = |e: sqlx::Error| Error::Connect {
            url: shown.clone(),
            source: e,
        };
        let pool = match backend {
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                                 PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await
                .map_err(connect)?,
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(connect)?,
        };
        match backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
        }
        Ok(Db {
            pool,
            backend,
            shown,
        })
    }

    /// The connection pool, for tests and tools that inspect the database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_token(&self, name: &str, token: &str) -> Result<()> {
        sqlx::query("INSERT INTO tokens (name, token_hash, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if unique(&e) {
                    Error::Conflict(format!("a token named {name:?} exists already"))
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    /// The name of the token, if it is known.
    pub async fn token_name(&self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM tokens WHERE token_hash = $1")
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    pub async fn add_object(&self, hash: &Hash, bytes: u64, size: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO objects (hash, bytes, size, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
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
            "INSERT INTO deltas (source, target, bytes, method, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (source, target) DO UPDATE SET bytes = excluded.bytes, method = excluded.method, created_at = excluded.created_at",
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
                params(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q.bind(h.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let h: String = row.try_get(0)?;
                let b: i64 = row.try_get(1)?;
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
                params(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q.bind(h.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let (s, t, b): (String, String, i64) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
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

    /// The manifest bytes and signature of a release.
    pub async fn manifest(&self, release_id: i64) -> Result<(Vec<u8>, Vec<u8>)> {
        let row = sqlx::query("SELECT manifest, signature FROM releases WHERE id = $1")
            .bind(release_id)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

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
            "SELECT c.release_id, c.paused, c.downgrade, c.downgrade_sig, c.updated_at, {ROLLOUT_COLS}
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
            rollout: rollout_row(&r, 5)?,
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

    /// Records a stored pack and its index.
    pub async fn add_pack(
        &self,
        hash: &Hash,
        bytes: u64,
        entries: &[(EntryKind, Hash)],
    ) -> Result<()> {
        let text: Vec<String> = entries
            .iter()
            .map(|(k, t)| format!("{}:{t}", k.to_u8()))
            .collect();
        sqlx::query(
            "INSERT INTO packs (hash, bytes, entries, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.to_string())
        .bind(bytes as i64)
        .bind(text.join(" "))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Which of `hashes` are stored packs.
    pub async fn packs_stored(&self, hashes: &[Hash]) -> Result<HashSet<Hash>> {
        let mut out = HashSet::new();
        for chunk in hashes.chunks(CHUNK) {
            let sql = format!(
                "SELECT hash FROM packs WHERE hash IN ({})",
                params(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q.bind(h.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                if let Ok(h) = row.try_get::<String, _>(0)?.parse() {
                    out.insert(h);
                }
            }
        }
        Ok(out)
    }

    /// The packs made for a release pair, in order, with their indexes.
    pub async fn plan_packs(&self, from: Option<i64>, to: i64) -> Result<Vec<PackIndex>> {
        let rows = sqlx::query(
            "SELECT k.hash, k.bytes, k.entries FROM plan_packs pp JOIN packs k ON k.hash = pp.pack
             WHERE pp.from_release = $1 AND pp.to_release = $2 ORDER BY pp.position",
        )
        .bind(from.unwrap_or(0))
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (hash, bytes, text): (String, i64, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let corrupt = || Error::Corrupt(format!("stored pack {hash} has an unreadable index"));
            let entries = text
                .split_whitespace()
                .map(|e| {
                    let (k, t) = e.split_once(':')?;
                    Some((EntryKind::from_u8(k.parse().ok()?)?, t.parse().ok()?))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(corrupt)?;
            out.push(PackIndex {
                hash: hash.parse().map_err(|_| corrupt())?,
                bytes: bytes as u64,
                entries,
            });
        }
        Ok(out)
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
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
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
            .bind(now())
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
        .bind(now())
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
                product_id,
                r.product,
                c,
                &NewRollout::whole(id, r.version),
                r.published_by,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(id)
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
        promote_in(&mut tx, product_id, product, channel, rollout, who).await?;
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
            "UPDATE channels SET paused = $1, updated_at = $2 WHERE product_id = $3 AND name = $4",
        )
        .bind(i64::from(paused))
        .bind(now())
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
        let t = now();
        sqlx::query(
            "UPDATE rollouts SET state = 'superseded', reason = 'rolled back' WHERE id IN
               (SELECT rollout_id FROM channels WHERE product_id = $1 AND name = $2) AND state <> 'superseded'",
        )
        .bind(product_id)
        .bind(channel)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO channels (product_id, name, release_id, updated_at, paused, downgrade, downgrade_sig, rollout_id)
             VALUES ($1, $2, $3, $4, 0, $5, $6, NULL)
             ON CONFLICT (product_id, name) DO UPDATE SET release_id = excluded.release_id,
                updated_at = excluded.updated_at, paused = 0, downgrade = excluded.downgrade,
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

    /// Sets the share of the channel's rollout by hand (and makes it active again). `false`
    /// when the channel has no rollout.
    pub async fn set_rollout_percent(
        &self,
        product_id: i64,
        product: &str,
        channel: &str,
        percent: f64,
        who: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE rollouts SET start_percent = $1, started_at = $2, state = 'active', reason = NULL
             WHERE id IN (SELECT rollout_id FROM channels WHERE product_id = $3 AND name = $4)",
        )
        .bind(percent)
        .bind(now())
        .bind(product_id)
        .bind(channel)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE channels SET updated_at = $1 WHERE product_id = $2 AND name = $3")
            .bind(now())
            .bind(product_id)
            .bind(channel)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            who,
            product,
            Some(channel),
            "rollout",
            serde_json::json!({ "percent": percent }),
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
        let n = sqlx::query(
            "UPDATE rollouts SET state = 'stopped', reason = $1 WHERE id = $2 AND state = 'active'",
        )
        .bind(reason)
        .bind(rollout_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        audit(&mut tx, "server", product, Some(channel), "stop", detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Active rollouts that stop on failures: (product, channel, rollout, target version).
    pub async fn watched_rollouts(&self) -> Result<Vec<(i64, String, String, Rollout, String)>> {
        let rows = sqlx::query(&format!(
            "SELECT p.id, p.name, c.name, r.version, {ROLLOUT_COLS}
             FROM channels c JOIN products p ON p.id = c.product_id
             JOIN rollouts ro ON ro.id = c.rollout_id JOIN releases r ON r.id = ro.release_id
             WHERE ro.state = 'active' AND ro.max_failure_rate IS NOT NULL"
        ))
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

    /// Devices of a product whose last attempt was `version`, seen since `since`, and how
    /// many of them report `failed` or `rolled-back`.
    pub async fn reports(&self, product_id: i64, version: &str, since: i64) -> Result<(u64, u64)> {
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN last_result IN ('failed', 'rolled-back') THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM devices WHERE product_id = $1 AND attempted = $2 AND seen_at >= $3 AND last_result IS NOT NULL",
        )
        .bind(product_id)
        .bind(version)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let (n, f): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((n as u64, f as u64))
    }

    /// Writes a batch of check-ins: the last one of each device wins.
    pub async fn record_checkins(&self, batch: &[CheckIn]) -> Result<()> {
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
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(CHECKIN_ROWS) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", params(i * 7 + 1, 7)))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO devices (product_id, device_id, channel, current_version, last_result, attempted, seen_at)
                 VALUES {values}
                 ON CONFLICT (product_id, device_id) DO UPDATE SET channel = excluded.channel,
                    current_version = excluded.current_version, last_result = excluded.last_result,
                    attempted = excluded.attempted, seen_at = excluded.seen_at"
            );
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q
                    .bind(c.product_id)
                    .bind(c.device_id.clone())
                    .bind(c.channel.clone())
                    .bind(c.current.clone())
                    .bind(c.result.clone())
                    .bind(c.attempted.clone())
                    .bind(c.at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The last check-in of one device.
    pub async fn device(&self, product_id: i64, device_id: &str) -> Result<Option<DeviceRow>> {
        let row = sqlx::query(
            "SELECT device_id, channel, current_version, last_result, attempted, seen_at
             FROM devices WHERE product_id = $1 AND device_id = $2",
        )
        .bind(product_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(DeviceRow {
            device_id: r.try_get(0)?,
            channel: r.try_get(1)?,
            current: r.try_get(2)?,
            result: r.try_get(3)?,
            attempted: r.try_get(4)?,
            seen_at: r.try_get(5)?,
        }))
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

    /// The newest audit lines of a product.
    pub async fn audit(&self, product: &str, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT at, who, product, channel, action, detail FROM audit WHERE product = $1
             ORDER BY id DESC LIMIT $2",
        )
        .bind(product)
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

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

async fn audit(
    tx: &mut Tx<'_>,
    who: &str,
    product: &str,
    channel: Option<&str>,
    action: &str,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at, who, product, channel, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now())
    .bind(who)
    .bind(product)
    .bind(channel)
    .bind(action)
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn promote_in(
    tx: &mut Tx<'_>,
    product_id: i64,
    product: &str,
    channel: &str,
    r: &NewRollout,
    who: &str,
) -> Result<()> {
    let t = now();
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
        "UPDATE rollouts SET state = 'superseded', reason = 'promoted again' WHERE id IN
           (SELECT rollout_id FROM channels WHERE product_id = $1 AND name = $2) AND state <> 'superseded'",
    )
    .bind(product_id)
    .bind(channel)
    .execute(&mut **tx)
    .await?;
    let rollout_id: i64 = sqlx::query(&format!(
        "INSERT INTO rollouts (product_id, channel, release_id, previous_release_id, floor_release_id,
            start_percent, step_percent, step_secs, max_failure_rate, min_reports, started_at, created_at,
            state, reason, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {}, $9, $10, $11, 'active', NULL, $12) RETURNING id",
        // A literal, not a parameter: through the Any driver PostgreSQL keeps the type of the
        // first NULL it saw for a cached statement and then refuses a float.
        match r.max_failure_rate {
            Some(v) if v.is_finite() => format!("{v:?}"),
            _ => "NULL".to_string(),
        }
    ))
    .bind(product_id)
    .bind(channel)
    .bind(r.release_id)
    .bind(previous)
    .bind(r.floor_release_id)
    .bind(r.percent)
    .bind(r.step_percent)
    .bind(r.step_secs)
    .bind(r.min_reports)
    .bind(t)
    .bind(t)
    .bind(who)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    sqlx::query(
        "INSERT INTO channels (product_id, name, release_id, updated_at, paused, downgrade, downgrade_sig, rollout_id)
         VALUES ($1, $2, $3, $4, 0, NULL, NULL, $5)
         ON CONFLICT (product_id, name) DO UPDATE SET release_id = excluded.release_id,
            updated_at = excluded.updated_at, paused = 0, downgrade = NULL, downgrade_sig = NULL,
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
            state: "active".into(),
            reason: None,
        };
        assert_eq!(r.percent_at(999), 10.0);
        assert_eq!(r.percent_at(1059), 10.0);
        assert_eq!(r.percent_at(1060), 30.0);
        assert_eq!(r.percent_at(1000 + 60 * 10), 100.0);
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            shown("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(shown("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }
}
