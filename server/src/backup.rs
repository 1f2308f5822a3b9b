//! `deltaroot-server backup` and `restore` for the embedded default (SQLite and a local
//! object folder), while the server runs.
//!
//! A backup is a folder: `deltaroot.db`, a consistent snapshot of the database made with
//! SQLite's `VACUUM INTO`, then `store/`, a copy of every stored file. The snapshot is taken
//! first: stored files are written before anything in the database names them and are
//! never changed, so every file the snapshot references is in the store when the copy
//! starts (files uploaded later are copied too, or not: either way the snapshot does not
//! name them, and the orphan sweep removes them after a restore). A second backup into the
//! same folder copies only files it does not hold yet.
//!
//! PostgreSQL and S3 are backed up with their own tools (`pg_dump`, bucket versioning or a
//! copy): `docs/OPERATIONS.md` says how.

use std::path::{Path, PathBuf};

use crate::db::{Backend, Db};
use crate::error::{Error, Result};
use crate::store::Store;

/// The database file of a backup (and of the data folder).
pub const DATABASE: &str = "deltaroot.db";
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

/// Backs up the database `db` (SQLite only) and the local object store `store` into `out`.
pub async fn backup(db: &Db, store: &Store, out: &Path) -> Result<Copied> {
    let Some(objects) = store.folder() else {
        return Err(Error::BadConfig(format!(
            "backup copies a local object folder; {} is S3: copy the bucket \
             (docs/OPERATIONS.md)",
            store.url()
        )));
    };
    if db.backend() != Backend::Sqlite {
        return Err(Error::BadConfig(format!(
            "backup copies the embedded SQLite database; {} is PostgreSQL: use pg_dump \
             (docs/OPERATIONS.md)",
            db.url()
        )));
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let snapshot = out.join(DATABASE);
    let partial = out.join(format!("{DATABASE}.partial"));
    // A snapshot a cut-off backup left behind: VACUUM INTO refuses an existing file.
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&partial)(e)),
        _ => {}
    }
    let target = partial
        .to_str()
        .ok_or_else(|| Error::BadConfig(format!("{} is not UTF-8", partial.display())))?
        .replace('\'', "''");
    sqlx::query(&format!("VACUUM INTO '{target}'"))
        .execute(db.pool())
        .await?;
    sync(&partial)?;
    std::fs::rename(&partial, &snapshot).map_err(Error::io(&snapshot))?;
    sync(out)?;
    let from = objects.to_owned();
    let to = out.join(STORE);
    crate::error::blocking("copying stored files", move || copy_tree(&from, &to)).await
}

/// Restores a backup made by [`backup`] into the data folder `data`, which must not hold a
/// database yet (a restore never overwrites a running server's state).
pub async fn restore(from: &Path, data: &Path) -> Result<Copied> {
    let snapshot = from.join(DATABASE);
    if !snapshot.is_file() {
        return Err(Error::BadConfig(format!(
            "{} holds no backup ({} is missing)",
            from.display(),
            snapshot.display()
        )));
    }
    let db = data.join(DATABASE);
    if db.exists() {
        return Err(Error::Conflict(format!(
            "{} exists: restore into an empty data folder (move the old one away first)",
            db.display()
        )));
    }
    std::fs::create_dir_all(data).map_err(Error::io(data))?;
    let (from, data) = (from.to_owned(), data.to_owned());
    crate::error::blocking("restoring a backup", move || {
        let copied = copy_tree(&from.join(STORE), &data.join(STORE))?;
        // The database last: a data folder with a database is a restored one.
        let partial = data.join(format!("{DATABASE}.partial"));
        std::fs::copy(&snapshot, &partial).map_err(Error::io(&partial))?;
        sync(&partial)?;
        std::fs::rename(&partial, &db).map_err(Error::io(&db))?;
        sync(&data)?;
        Ok(copied)
    })
    .await
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
            let name = dst
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let partial = dst.with_file_name(format!(".{name}.partial"));
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
