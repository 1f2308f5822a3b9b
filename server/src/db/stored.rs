//! What is stored in the object store: objects, deltas and packs, with their sizes.

use std::collections::{HashMap, HashSet};

use deltaroot_format::{delta_path, object_path, pack_path, EntryKind, Hash, PackIndex};
use sqlx::Row;

use super::{params, Db, CHUNK};
use crate::error::{Error, Result};

/// A file in the object store, by what names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoredFile {
    Object(Hash),
    /// (source, target)
    Delta(Hash, Hash),
    Pack(Hash),
}

impl StoredFile {
    /// The path devices request, and the store keeps it at.
    pub fn rel(&self) -> String {
        match self {
            StoredFile::Object(h) => object_path(h),
            StoredFile::Delta(s, t) => delta_path(s, t),
            StoredFile::Pack(h) => pack_path(h),
        }
    }

    /// The file a store path names; `None` for anything else found in the store.
    pub fn from_rel(rel: &str) -> Option<StoredFile> {
        let mut parts = rel.split('/');
        let (kind, fan, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let f = match kind {
            "objects" => StoredFile::Object(name.parse().ok()?),
            "packs" => StoredFile::Pack(name.parse().ok()?),
            "deltas" => {
                let (s, t) = name.split_once('-')?;
                StoredFile::Delta(s.parse().ok()?, t.parse().ok()?)
            }
            _ => return None,
        };
        (f.rel() == rel && !fan.is_empty()).then_some(f)
    }
}

impl Db {
    pub async fn add_object(&self, hash: &Hash, bytes: u64, size: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO objects (hash, bytes, size, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.to_string())
        .bind(bytes as i64)
        .bind(size as i64)
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a stored delta; a delta recorded already keeps its record (stored files are
    /// immutable and plans hold their sizes).
    pub async fn add_delta(
        &self,
        source: &Hash,
        target: &Hash,
        bytes: u64,
        method: u8,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO deltas (source, target, bytes, method, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (source, target) DO NOTHING",
        )
        .bind(source.to_string())
        .bind(target.to_string())
        .bind(bytes as i64)
        .bind(i64::from(method))
        .bind(self.now())
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

    /// The method of each stored delta among `pairs` (source, target).
    pub async fn delta_methods(&self, pairs: &[(Hash, Hash)]) -> Result<HashMap<(Hash, Hash), u8>> {
        let mut out = HashMap::new();
        for chunk in pairs.chunks(CHUNK / 2) {
            let mut sql = String::from("SELECT source, target, method FROM deltas WHERE ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str(&format!(
                    "(source = ${} AND target = ${})",
                    2 * i + 1,
                    2 * i + 2
                ));
            }
            let mut q = sqlx::query(&sql);
            for (s, t) in chunk {
                q = q.bind(s.to_string()).bind(t.to_string());
            }
            for r in q.fetch_all(&self.pool).await? {
                let (s, t, m): (String, String, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                let parse = |h: &str| {
                    h.parse::<Hash>()
                        .map_err(|e| Error::Corrupt(format!("stored delta name {h}: {e}")))
                };
                out.insert((parse(&s)?, parse(&t)?), m.clamp(0, 255) as u8);
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
        .bind(self.now())
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

    /// Every recorded object, delta and pack with the time it was recorded (its upload).
    pub async fn stored_files(&self) -> Result<HashMap<StoredFile, i64>> {
        let mut out = HashMap::new();
        for row in sqlx::query("SELECT hash, created_at FROM objects")
            .fetch_all(&self.pool)
            .await?
        {
            if let Ok(h) = row.try_get::<String, _>(0)?.parse() {
                out.insert(StoredFile::Object(h), row.try_get(1)?);
            }
        }
        for row in sqlx::query("SELECT source, target, created_at FROM deltas")
            .fetch_all(&self.pool)
            .await?
        {
            let (s, t): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if let (Ok(s), Ok(t)) = (s.parse(), t.parse()) {
                out.insert(StoredFile::Delta(s, t), row.try_get(2)?);
            }
        }
        for row in sqlx::query("SELECT hash, created_at FROM packs")
            .fetch_all(&self.pool)
            .await?
        {
            if let Ok(h) = row.try_get::<String, _>(0)?.parse() {
                out.insert(StoredFile::Pack(h), row.try_get(1)?);
            }
        }
        Ok(out)
    }

    /// The packs made for release pairs (what published releases brought).
    pub async fn planned_packs(&self) -> Result<HashSet<Hash>> {
        let rows = sqlx::query("SELECT DISTINCT pack FROM plan_packs")
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashSet::new();
        for r in rows {
            if let Ok(h) = r.try_get::<String, _>(0)?.parse() {
                out.insert(h);
            }
        }
        Ok(out)
    }

    /// Drops the record of a stored file (the orphan sweep, before it removes the file).
    pub async fn forget_stored(&self, f: &StoredFile) -> Result<()> {
        let q = match f {
            StoredFile::Object(h) => {
                sqlx::query("DELETE FROM objects WHERE hash = $1").bind(h.to_string())
            }
            StoredFile::Delta(s, t) => {
                sqlx::query("DELETE FROM deltas WHERE source = $1 AND target = $2")
                    .bind(s.to_string())
                    .bind(t.to_string())
            }
            StoredFile::Pack(h) => {
                sqlx::query("DELETE FROM packs WHERE hash = $1").bind(h.to_string())
            }
        };
        q.execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_name_their_files() {
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        for f in [
            StoredFile::Object(a),
            StoredFile::Delta(a, b),
            StoredFile::Pack(b),
        ] {
            assert_eq!(StoredFile::from_rel(&f.rel()), Some(f));
        }
        let wrong_fan = format!("objects/zz/{a}");
        assert_eq!(StoredFile::from_rel(&wrong_fan), None);
        assert_eq!(StoredFile::from_rel("objects/ab"), None);
        assert_eq!(StoredFile::from_rel("readyz-probe/none"), None);
    }
}
