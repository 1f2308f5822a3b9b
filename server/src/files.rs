//! Stored files are written once. An object, delta or pack is put with a keep-first write
//! ([`crate::store::Store::put`]) and then recorded with the size of the file that stayed,
//! which the database keeps too (`ON CONFLICT DO NOTHING`): plans and caches hold these
//! sizes, so a racing second upload of the same path, or a delta the server built while the
//! publisher uploaded one, never changes a file a device may be fetching nor its size.

use bytes::Bytes;
use deltaroot_format::{delta_path, object_path, pack_path, DeltaHeader, EntryKind, Hash};

use crate::error::{Error, Result};
use crate::store::Put;
use crate::App;

/// What is stored: bytes in memory (a delta the server built) or an upload spooled to a
/// file, never held whole.
pub enum Body<'a> {
    Bytes(Bytes),
    File { path: &'a std::path::Path, len: u64 },
}

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    async fn put(&self, app: &App, rel: &str) -> Result<Put> {
        match self {
            Body::Bytes(b) => app.store.put(rel, b.clone()).await,
            Body::File { path, len } => app.store.put_file(rel, path, *len).await,
        }
    }
}

/// Stores an object the caller checked (zstd of the content named `hash`, `size` bytes) and
/// records it.
pub async fn store_object(app: &App, hash: &Hash, body: Body<'_>, size: u64) -> Result<()> {
    let rel = object_path(hash);
    let bytes = match body.put(app, &rel).await? {
        Put::Created => body.len(),
        // The same content, possibly compressed otherwise: what is stored is what counts.
        Put::Existed => kept_size(app, &rel).await?,
    };
    app.db.add_object(hash, bytes, size).await
}

/// Stores a delta from `source` to `target` (its header checked by the caller) and records
/// it with the size and method (`method`, from the header the caller checked) of the delta
/// that stays.
pub async fn store_delta(
    app: &App,
    source: &Hash,
    target: &Hash,
    body: Body<'_>,
    method: u8,
) -> Result<()> {
    let rel = delta_path(source, target);
    let (bytes, method) = match body.put(app, &rel).await? {
        Put::Created => (body.len(), method),
        Put::Existed => {
            let kept = app.store.get(&rel).await?;
            (kept.len() as u64, header_method(&rel, &kept)?)
        }
    };
    app.db.add_delta(source, target, bytes, method).await
}

/// Stores a pack (named by the hash of its bytes, so any copy is the same) and records it
/// with its index.
pub async fn store_pack(
    app: &App,
    hash: &Hash,
    body: Body<'_>,
    entries: &[(EntryKind, Hash)],
) -> Result<()> {
    let rel = pack_path(hash);
    let bytes = match body.put(app, &rel).await? {
        Put::Created => body.len(),
        Put::Existed => kept_size(app, &rel).await?,
    };
    app.db.add_pack(hash, bytes, entries).await
}

async fn kept_size(app: &App, rel: &str) -> Result<u64> {
    app.store
        .size(rel)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{rel} was stored and is gone")))
}

fn header_method(rel: &str, delta: &[u8]) -> Result<u8> {
    let (h, _) =
        DeltaHeader::decode(delta).map_err(|e| Error::Corrupt(format!("stored {rel}: {e}")))?;
    Ok(h.method as u8)
}
