//! The release database: products, releases, channels and their rollouts, stored objects and
//! deltas, plans, upload tokens, dashboard users, device check-ins and the audit log.
//!
//! One code path for both backends through sqlx's `Any` driver: SQLite (one file in the data
//! folder, the default) and PostgreSQL (`--database postgres://…`, for several replicas).
//! Every statement is written in the SQL both understand (`$n` parameters, `ON CONFLICT`,
//! `RETURNING`); migrations live in `../migrations/{sqlite,postgres}`.
//!
//! By concern: [`releases`] (products and releases), [`channels`] (channels, rollouts,
//! downgrades, the audit log), [`devices`] (check-ins), [`daily`] (the dashboard's daily rollups), [`egress`] (rollouts paced by bytes), [`tokens`], [`users`], [`sessions`], [`stored`] (objects,
//! deltas and packs) and [`plans`].

use std::path::Path;
use std::sync::Arc;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::Executor;

use crate::clock::Clock;
use crate::error::{Error, Result};

pub use channels::{AuditRow, ChannelRow, NewRollout, Rollout, RolloutChange, RolloutState};
pub use devices::{CheckIn, CheckInResult, DeviceRow, KnownDevices};
pub use egress::Egress;
pub use releases::{NewRelease, ReleaseRow};
pub use sessions::SessionRow;
pub use stored::StoredFile;
pub use tokens::TokenRow;
pub use users::UserRow;

mod answers;
mod bulk;
mod channels;
pub mod daily;
mod devices;
mod egress;
mod plans;
mod releases;
mod sessions;
mod stored;
mod tokens;
mod users;

/// How many values go in one `IN (…)` list.
const CHUNK: usize = 500;

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
    shown: Arc<str>,
    /// The URL as given, for PostgreSQL's own tools (`backup`).
    given: Arc<str>,
    /// Where every time the database records comes from.
    clock: Clock,
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

/// Hides the password of a database URL.
pub(crate) fn shown(url: &str) -> String {
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
                // Each connection keeps 32 MiB of pages and maps up to 256 MiB of the file, and
                // statement journals stay in memory: bench/load.sh's check-in writer spent a
                // third of its time in read and write calls for pages (10.3 to 9.7 µs per
                // check-in).
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                                 PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
                                 PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768; \
                                 PRAGMA mmap_size = 268435456;",
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
            shown: shown.into(),
            given: url.into(),
            clock: Clock::system(),
        })
    }

    /// This database with times taken from `clock` (the server's, or a test's).
    pub fn with_clock(mut self, clock: Clock) -> Db {
        self.clock = clock;
        self
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Seconds since the Unix epoch, by the database's clock.
    fn now(&self) -> i64 {
        self.clock.now()
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

    /// The URL as given, password and all: only for PostgreSQL's own tools.
    pub(crate) fn connect_url(&self) -> &str {
        &self.given
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Writes an audit line at `at`.
async fn audit(
    tx: &mut Tx<'_>,
    at: i64,
    who: &str,
    product: &str,
    channel: Option<&str>,
    action: &str,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at, who, product, channel, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(who)
    .bind(product)
    .bind(channel)
    .bind(action)
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A product, channel or version name read back from the database, where only names are
/// written: one that is not a name is corrupt data.
pub fn stored_name(field: &'static str, value: String) -> Result<deltaroot_format::Name> {
    deltaroot_format::Name::new(field, value).map_err(|e| Error::Corrupt(format!("stored {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            shown("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(shown("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }
}
