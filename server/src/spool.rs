//! Upload bodies, spooled: an object, delta or pack PUT is streamed to a temporary file in
//! `data/uploads` (never held in memory), counted against `--max-upload-mib` as it arrives
//! (413 naming the limit as soon as it is passed, or at once when `Content-Length` says
//! so), and verified from that file on the blocking pool before it is handed to the store.
//! The file is removed when the upload is done or refused.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use deltaroot_format::container::HEADER_LEN;
use deltaroot_format::{DeltaHeader, Hash, PackEntry, PackReader};
use futures::StreamExt;

use crate::error::{blocking, Error, Result};

/// Chunks in flight between the connection and the file writer.
const CHANNEL: usize = 8;
/// Files in `data/uploads` older than this when the server starts are leftovers of a crash.
const STALE: Duration = Duration::from_secs(24 * 3600);

/// An upload body on disk.
pub struct Spooled {
    file: tempfile::NamedTempFile,
    /// Bytes received.
    pub len: u64,
    /// BLAKE3 of the bytes as received.
    pub hash: Hash,
}

impl Spooled {
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The spooled file as what [`crate::files`] stores.
    pub fn body(&self) -> crate::files::Body<'_> {
        crate::files::Body::File {
            path: self.path(),
            len: self.len,
        }
    }
}

fn too_large(limit: u64) -> Error {
    Error::TooLarge(format!("the limit is {limit} bytes (--max-upload-mib)"))
}

/// Streams `body` to a new file in `dir`, hashing it on the way, refusing it past `limit`
/// bytes. Writing and hashing run on the blocking pool.
pub async fn spool(dir: &Path, headers: &HeaderMap, body: Body, limit: u64) -> Result<Spooled> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL);
    let dir_owned: PathBuf = dir.to_owned();
    let writer = tokio::task::spawn_blocking(move || -> Result<(tempfile::NamedTempFile, Hash)> {
        let mut file = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&dir_owned)
            .map_err(Error::io(&dir_owned))?;
        let path = file.path().to_owned();
        let mut hasher = blake3::Hasher::new();
        {
            let mut w = BufWriter::with_capacity(1 << 20, file.as_file_mut());
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
                w.write_all(&chunk).map_err(Error::io(&path))?;
            }
            w.flush().map_err(Error::io(&path))?;
        }
        Ok((file, hasher.finalize().into()))
    });
    let mut stream = body.into_data_stream();
    let mut len = 0u64;
    let received: Result<()> = loop {
        match stream.next().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(Error::Body(e.to_string())),
            Some(Ok(chunk)) => {
                len += chunk.len() as u64;
                if len > limit {
                    break Err(too_large(limit));
                }
                if tx.send(chunk).await.is_err() {
                    // The writer stopped: its error is the answer.
                    break Ok(());
                }
            }
        }
    };
    drop(tx);
    let written = writer.await.map_err(|source| Error::Task {
        what: "writing an upload",
        source,
    });
    received?;
    let (file, hash) = written??;
    Ok(Spooled { file, len, hash })
}

/// Checks a spooled object: one zstd stream whose content hashes to `hash`. Returns the
/// content's size.
pub async fn verify_object(s: &Spooled, hash: Hash) -> Result<u64> {
    let path = s.path().to_owned();
    blocking("verifying an uploaded object", move || {
        let f = std::fs::File::open(&path).map_err(Error::io(&path))?;
        let mut dec = zstd::stream::read::Decoder::new(f)
            .map_err(|e| Error::BadRequest(format!("object is not zstd: {e}")))?;
        dec.window_log_max(deltaroot_format::container::MAX_WINDOW_LOG)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = dec
                .read(&mut buf)
                .map_err(|e| Error::BadRequest(format!("object does not decompress: {e}")))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        let got: Hash = hasher.finalize().into();
        if got != hash {
            return Err(Error::BadRequest(format!(
                "object content hashes to {got}, not {hash}"
            )));
        }
        Ok(size)
    })
    .await
}

/// The header of a spooled delta.
pub async fn delta_header(s: &Spooled) -> Result<DeltaHeader> {
    let path = s.path().to_owned();
    blocking("reading an uploaded delta", move || {
        let f = std::fs::File::open(&path).map_err(Error::io(&path))?;
        let mut head = Vec::with_capacity(HEADER_LEN);
        f.take(HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(Error::io(&path))?;
        Ok(DeltaHeader::decode(&head)?.0)
    })
    .await
}

/// Checks a spooled pack: it hashes to `hash`, and its index and bodies read to the end of
/// the stream (the bodies are not applied). Returns its index.
pub async fn verify_pack(s: &Spooled, hash: Hash, name: String) -> Result<Vec<PackEntry>> {
    if s.hash != hash {
        return Err(Error::BadRequest(format!(
            "pack hashes to {}, not {hash}",
            s.hash
        )));
    }
    let path = s.path().to_owned();
    blocking("verifying an uploaded pack", move || {
        let f = std::fs::File::open(&path).map_err(Error::io(&path))?;
        Ok(PackReader::open(&name, BufReader::new(f))?.check_all()?)
    })
    .await
}

/// Removes upload files left by a server that stopped while receiving them (not those of
/// another process receiving now: only files older than a day).
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE);
        if old && e.file_name().to_string_lossy().starts_with("upload-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
