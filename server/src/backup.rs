//! `deltaroot-server backup` and `restore`, on either backend, while the server runs.
//!
//! A backup is a folder holding the database and `store/`, a copy of every stored file:
//!
//! - SQLite: `deltaroot.db`, a consistent snapshot made with SQLite's `VACUUM INTO`;
//! - PostgreSQL: `deltaroot.pgdump`, a consistent snapshot made by `pg_dump
//!   --format=custom` (PostgreSQL's client tools on `PATH`), of the whole database, or of
//!   deltaroot's schema when it lives in one of its own (`search_path` in the URL);
//! - a local object folder or an S3 bucket (prefix) alike are copied into `store/`.
//!
//! The snapshot is taken first: stored files are written before anything in the database
//! names them and are never changed, so every file the snapshot references is in the store
//! when the copy starts (files uploaded later are copied too, or not: either way the
//! snapshot does not name them, and the orphan sweep removes them after a restore). A
//! second backup into the same folder copies only files it does not hold yet.
//!
//! A restore puts the stored files back first and the database last, into an empty
//! database of the backup's kind (it never writes over one), and into the data folder's
//! object folder or a bucket, whichever the restored server will use.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::db::{Backend, Db};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::Config;

/// The SQLite snapshot of a backup (and the database of the data folder).
pub const DATABASE: &str = "deltaroot.db";
/// The PostgreSQL snapshot of a backup (`pg_dump --format=custom`).
pub const PG_DUMP: &str = "deltaroot.pgdump";
/// The stored files of a backup (and of the data folder).
pub const STORE: &str = "store";

/// What a backup or restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Stored files copied, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Stored files the destination held already.
    pub kept: u64,
}

/// Backs up the database `db` and the object store `store` into `out`.
pub async fn backup(db: &Db, store: &Store, out: &Path) -> Result<Copied> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let (mine, other) = match db.backend() {
        Backend::Sqlite => (DATABASE, PG_DUMP),
        Backend::Postgres => (PG_DUMP, DATABASE),
    };
    if out.join(other).exists() {
        return Err(Error::Conflict(format!(
            "{} holds a backup of another kind of database ({other}): back up {} into a \
             folder of its own",
            out.display(),
            db.url()
        )));
    }
    let snapshot = out.join(mine);
    let partial = out.join(format!("{mine}.partial"));
    // A snapshot a cut-off backup left behind: VACUUM INTO refuses an existing file.
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&partial)(e)),
        _ => {}
    }
    match db.backend() {
        Backend::Sqlite => {
            let target = partial
                .to_str()
                .ok_or_else(|| Error::BadConfig(format!("{} is not UTF-8", partial.display())))?
                .replace('\'', "''");
            sqlx::query(&format!("VACUUM INTO '{target}'"))
                .execute(db.pool())
                .await?;
        }
        Backend::Postgres => {
            let schema: String = sqlx::query_scalar("SELECT CAST(current_schema() AS TEXT)")
                .fetch_one(db.pool())
                .await?;
            let mut args = vec!["--format=custom".to_string()];
            // A schema of its own is dumped alone (with its CREATE SCHEMA); the default one
            // with the whole database, which then restores into a new database as it is.
            if schema != "public" {
                args.push(format!("--schema={schema}"));
            }
            args.push(format!("--file={}", partial.display()));
            pg_tool("pg_dump", db.connect_url(), &args).await?;
        }
    }
    sync(&partial)?;
    std::fs::rename(&partial, &snapshot).map_err(Error::io(&snapshot))?;
    sync(out)?;
    let to = out.join(STORE);
    match store.folder() {
        Some(objects) => {
            let from = objects.to_owned();
            crate::error::blocking("copying stored files", move || copy_tree(&from, &to)).await
        }
        None => download(store, &to).await,
    }
}

/// Restores a backup made by [`backup`] into the database and object store `target` names:
/// a SQLite snapshot into the data folder's database (which must not exist yet), a
/// PostgreSQL snapshot into a PostgreSQL database without deltaroot's tables.
pub async fn restore(from: &Path, target: &Config) -> Result<Copied> {
    let (sqlite, pg) = (from.join(DATABASE), from.join(PG_DUMP));
    let postgres = target
        .database
        .as_deref()
        .filter(|u| !u.starts_with("sqlite:"));
    match (sqlite.is_file(), pg.is_file()) {
        (false, false) => {
            return Err(Error::BadConfig(format!(
                "{} holds no backup (neither {DATABASE} nor {PG_DUMP} is there)",
                from.display()
            )))
        }
        (true, true) => {
            return Err(Error::BadConfig(format!(
                "{} holds both {DATABASE} and {PG_DUMP}: which one to restore is unclear",
                from.display()
            )))
        }
        (true, false) if target.database.is_some() => {
            return Err(Error::BadConfig(format!(
                "{} holds a SQLite snapshot: restore it into a data folder (--data, \
                 without --database)",
                from.display()
            )))
        }
        (false, true) if postgres.is_none() => {
            return Err(Error::BadConfig(format!(
                "{} holds a PostgreSQL snapshot: restore it into an empty PostgreSQL \
                 database (--database postgres://…)",
                from.display()
            )))
        }
        _ => {}
    }
    let db = target.data.join(DATABASE);
    if let Some(url) = postgres {
        if holds_tables(url).await? {
            return Err(Error::Conflict(format!(
                "{} already holds deltaroot's tables: restore into an empty database",
                crate::db::shown(url)
            )));
        }
    } else if db.exists() {
        return Err(Error::Conflict(format!(
            "{} exists: restore into an empty data folder (move the old one away first)",
            db.display()
        )));
    }
    std::fs::create_dir_all(&target.data).map_err(Error::io(&target.data))?;
    let store = match &target.objects {
        Some(url) => Store::open(url, &target.s3)?,
        None => Store::local(&target.data.join(STORE))?,
    };
    let backup_store = from.join(STORE);
    let copied = match store.folder() {
        Some(objects) => {
            let (src, dst) = (backup_store, objects.to_owned());
            crate::error::blocking("restoring stored files", move || copy_tree(&src, &dst)).await?
        }
        None => upload(&backup_store, &store).await?,
    };
    // The database last: a database that exists is a restored one.
    match postgres {
        Some(url) => {
            let args = [
                "--exit-on-error".to_string(),
                "--single-transaction".to_string(),
                "--no-owner".to_string(),
                "--no-privileges".to_string(),
                pg.display().to_string(),
            ];
            pg_tool("pg_restore", url, &args).await?;
        }
        None => {
            let data = target.data.clone();
            crate::error::blocking("restoring the database", move || {
                let partial = data.join(format!("{DATABASE}.partial"));
                std::fs::copy(&sqlite, &partial).map_err(Error::io(&partial))?;
                sync(&partial)?;
                std::fs::rename(&partial, &db).map_err(Error::io(&db))?;
                sync(&data)
            })
            .await?;
        }
    }
    Ok(copied)
}

/// Whether the PostgreSQL database at `url` has deltaroot's tables on its search path.
async fn holds_tables(url: &str) -> Result<bool> {
    use sqlx::Connection;
    let shown = crate::db::shown(url);
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .map_err(|source| Error::Connect {
            url: shown.clone(),
            source,
        })?;
    let found: bool = sqlx::query_scalar("SELECT to_regclass('releases') IS NOT NULL")
        .fetch_one(&mut c)
        .await?;
    let _ = c.close().await;
    Ok(found)
}

/// Runs PostgreSQL's `tool` (`pg_dump`, `pg_restore`) on the database at `url`, the
/// password passed in the environment rather than on the command line.
async fn pg_tool(tool: &str, url: &str, args: &[String]) -> Result<()> {
    let shown = crate::db::shown(url);
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| Error::BadConfig(format!("database {shown}: {e}")))?;
    let password = parsed.password().map(|p| {
        percent_encoding::percent_decode_str(p)
            .decode_utf8_lossy()
            .into_owned()
    });
    let _ = parsed.set_password(None);
    let mut cmd = tokio::process::Command::new(tool);
    cmd.arg(format!("--dbname={parsed}")).args(args);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::BadConfig(format!(
                "{tool} is not on PATH: install PostgreSQL's client tools (Debian: \
                 postgresql-client) of the server's major version or later"
            ))
        } else {
            Error::io(tool)(e)
        }
    })?;
    if !out.status.success() {
        return Err(Error::BadConfig(format!(
            "{tool} on {shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Copies every file of a bucket (`store`) into the folder `to`, skipping files `to` holds
/// with the same length (stored files never change), each synced before it is renamed in.
async fn download(store: &Store, to: &Path) -> Result<Copied> {
    use tokio::io::AsyncWriteExt;
    let mut done = Copied::default();
    for f in store.list("").await? {
        let dst = to.join(safe_rel(&f.rel)?);
        if std::fs::metadata(&dst).is_ok_and(|m| m.len() == f.size) {
            done.kept += 1;
            continue;
        }
        let dir = dst.parent().unwrap_or(to).to_owned();
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let partial = partial_of(&dst);
        let Some((_, mut body)) = store.open_range(&f.rel, None).await? else {
            continue; // removed since it was listed: an orphan the sweep took
        };
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(Error::io(&partial))?;
        let mut len = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            len += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(Error::io(&partial))?;
        }
        file.sync_all().await.map_err(Error::io(&partial))?;
        drop(file);
        std::fs::rename(&partial, &dst).map_err(Error::io(&dst))?;
        sync(&dir)?;
        done.files += 1;
        done.bytes += len;
    }
    Ok(done)
}

/// Stores every file below `from` into the bucket `store` under the same name, skipping
/// files it holds with the same length.
async fn upload(from: &Path, store: &Store) -> Result<Copied> {
    let mut done = Copied::default();
    let (src, mut files) = (from.to_owned(), Vec::new());
    let listed = crate::error::blocking("listing a backup", move || {
        walk(&src, &mut files).map(|_| files)
    })
    .await?;
    for (rel, len) in listed {
        if store.size(&rel).await? == Some(len) {
            done.kept += 1;
            continue;
        }
        store.put_file(&rel, &from.join(&rel), len).await?;
        done.files += 1;
        done.bytes += len;
    }
    Ok(done)
}

/// Every regular file below `root` (not the hidden ones a cut-off copy left), as a path
/// relative to it with `/` between its parts, and its length.
fn walk(root: &Path, out: &mut Vec<(String, u64)>) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            let kind = entry.file_type().map_err(Error::io(entry.path()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let rel = rel.join(&name);
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                let len = entry.metadata().map_err(Error::io(entry.path()))?.len();
                let rel = rel
                    .to_str()
                    .ok_or_else(|| Error::BadConfig(format!("{} is not UTF-8", rel.display())))?
                    .to_string();
                out.push((rel, len));
            }
        }
    }
    Ok(())
}

/// A stored file's name as a relative path that stays below the backup folder.
fn safe_rel(rel: &str) -> Result<PathBuf> {
    let ok = !rel.is_empty()
        && rel
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.starts_with('.'));
    if !ok {
        return Err(Error::Corrupt(format!(
            "the object store lists {rel:?}, not a stored file's name"
        )));
    }
    Ok(PathBuf::from(rel))
}

/// Where a copy of `dst` is written before it is renamed into place.
fn partial_of(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dst.with_file_name(format!(".{name}.partial"))
}

/// Copies every file below `from` to the same place below `to`, skipping files `to` holds
/// with the same length (stored files never change), each synced before it is renamed in.
fn copy_tree(from: &Path, to: &Path) -> Result<Copied> {
    let mut done = Copied::default();
    if !from.exists() {
        return Ok(done);
    }
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = from.join(&rel);
        std::fs::create_dir_all(to.join(&rel)).map_err(Error::io(to.join(&rel)))?;
        for entry in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            let kind = entry.file_type().map_err(Error::io(entry.path()))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue; // a copy a cut-off run left, or a store's file being written
            }
            let rel = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(rel);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let (src, dst) = (from.join(&rel), to.join(&rel));
            let len = entry.metadata().map_err(Error::io(&src))?.len();
            if std::fs::metadata(&dst).is_ok_and(|m| m.len() == len) {
                done.kept += 1;
                continue;
            }
            let partial = partial_of(&dst);
            std::fs::copy(&src, &partial).map_err(Error::io(&partial))?;
            sync(&partial)?;
            std::fs::rename(&partial, &dst).map_err(Error::io(&dst))?;
            done.files += 1;
            done.bytes += len;
        }
        sync(&to.join(&rel))?;
    }
    Ok(done)
}

/// Syncs a file or a folder (its entries) to disk.
fn sync(p: &Path) -> Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(p))
}
