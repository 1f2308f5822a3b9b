//! Object storage for objects and deltas, behind `object_store` so a local folder (the
//! default) and S3-compatible storage (`s3://bucket/prefix`) are one code path. Paths are the
//! same relative paths devices request (`objects/…`, `deltas/…`).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, PutMode, PutOptions, PutPayload,
};

use crate::error::{Error, Result};

/// Bytes read from a local file per chunk of a download.
const FILE_CHUNK: usize = 256 << 10;
/// Part size of an upload stored from a file (S3's parts are at least 5 MiB).
pub const PART: usize = 8 << 20;
/// Bytes read from an upload's file at a time while its parts are assembled.
const READ: usize = 1 << 20;

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// `file:///…` or `s3://bucket/prefix`, for messages.
    url: Arc<str>,
    /// The folder of a local store: what `put` makes durable before it returns.
    local: Option<Arc<std::path::Path>>,
}

/// Where an S3-compatible store is and how to sign for it; unset fields come from the
/// usual `AWS_*` environment variables.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `http://127.0.0.1:9000` for a local server; plain HTTP is allowed only here.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
}

impl S3Options {
    /// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), the rest through `AmazonS3Builder::from_env`.
    pub fn from_env() -> S3Options {
        S3Options {
            endpoint: std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok(),
            ..S3Options::default()
        }
    }
}

/// What a keep-first [`Store::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The file is the one just written.
    Created,
    /// A file was there already and stays: stored files are never overwritten.
    Existed,
}

/// A stored file as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The path devices request (`objects/…`, `deltas/…`, `packs/…`).
    pub rel: String,
    pub size: u64,
    /// Last modified, in seconds since the Unix epoch.
    pub modified: i64,
}

/// A stream of a stored file's bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

fn err(path: &str) -> impl FnOnce(object_store::Error) -> Error + '_ {
    move |source| Error::Store {
        path: path.to_string(),
        source,
    }
}

impl Store {
    /// A store in a local folder.
    pub fn local(dir: &std::path::Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(err("/"))?;
        Ok(Store {
            inner: Arc::new(fs),
            url: format!("file://{}", dir.display()).into(),
            local: Some(Arc::from(dir)),
        })
    }

    /// `s3://bucket` or `s3://bucket/prefix`.
    pub fn s3(url: &str, opts: &S3Options) -> Result<Store> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::BadConfig(format!("objects {url}: expected s3://bucket/prefix"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::BadConfig(format!("objects {url}: no bucket")));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(e) = &opts.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &opts.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &opts.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        match &opts.region {
            Some(r) => b = b.with_region(r),
            None if std::env::var("AWS_REGION").is_err()
                && std::env::var("AWS_DEFAULT_REGION").is_err() =>
            {
                b = b.with_region("us-east-1")
            }
            None => {}
        }
        let s3 = b.build().map_err(err(url))?;
        let prefix = prefix.trim_matches('/');
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Store {
            inner,
            url: url.into(),
            local: None,
        })
    }

    /// `s3://…`, `file:///…` or a plain folder path.
    pub fn open(url: &str, s3: &S3Options) -> Result<Store> {
        if url.starts_with("s3://") {
            Store::s3(url, s3)
        } else {
            Store::local(std::path::Path::new(
                url.strip_prefix("file://").unwrap_or(url),
            ))
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The folder of a local store (`None` for S3).
    pub fn folder(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// Stores `data` at `rel` unless a file is there already, which stays: stored files
    /// are immutable (plans and caches hold their sizes), so of two racing uploads the first
    /// is kept (S3: a conditional PUT, `If-None-Match: *`; a folder: a hard link that does
    /// not replace). In a local folder the file and its folder are on disk when this returns
    /// (without the syncs a power cut could leave a release recorded in the database whose
    /// files are empty). S3 acknowledges a PUT only once it is durable.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<Put> {
        let path = StorePath::from(rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&path, PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(Put::Existed),
            // A store configured without conditional writes: look first (a race between
            // two uploads of one file may then still replace it).
            Err(object_store::Error::NotImplemented) => {
                if self.size(rel).await?.is_some() {
                    return Ok(Put::Existed);
                }
                self.inner
                    .put(&path, PutPayload::from(data))
                    .await
                    .map_err(err(rel))?;
            }
            Err(e) => return Err(err(rel)(e)),
        }
        self.sync(rel).await?;
        Ok(Put::Created)
    }

    /// Overwrites the file at `rel`. The server never does: this is for tests that play an
    /// attacker or a broken disk.
    pub async fn replace(&self, rel: &str, data: Bytes) -> Result<()> {
        self.inner
            .put(&StorePath::from(rel), PutPayload::from(data))
            .await
            .map_err(err(rel))?;
        self.sync(rel).await
    }

    /// Stores the file at `path` (`len` bytes) at `rel` without holding it in memory, unless
    /// a file is there already, which stays (as [`Store::put`]): in a local folder a copy
    /// linked into place without replacing; on S3 up to [`PART`] bytes in one conditional
    /// PUT, larger files, when nothing is stored at `rel` yet, in parts of [`PART`] bytes (at
    /// most two in flight; two uploads racing past that look may then both write the same
    /// path, which only a publisher's token can do). Durable when this returns.
    pub async fn put_file(&self, rel: &str, path: &std::path::Path, len: u64) -> Result<Put> {
        use tokio::io::AsyncReadExt;
        if let Some(root) = &self.local {
            // A local folder: a kernel copy to a temporary file beside the target, linked
            // into place unless a file is there (the first stays), then made durable.
            let (src, dest) = (path.to_owned(), root.join(rel));
            let created = blocking_io(root.join(rel), move || {
                use std::os::unix::fs::PermissionsExt;
                let dir = dest.parent().unwrap_or(std::path::Path::new("."));
                std::fs::create_dir_all(dir)?;
                let tmp = tempfile::Builder::new()
                    .prefix(".upload-")
                    .tempfile_in(dir)?;
                std::fs::copy(&src, tmp.path())?;
                std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
                match tmp.persist_noclobber(&dest) {
                    Ok(_) => Ok(true),
                    Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e.error),
                }
            })
            .await?;
            if !created {
                return Ok(Put::Existed);
            }
            self.sync(rel).await?;
            return Ok(Put::Created);
        }
        if len <= PART as u64 {
            let data = tokio::fs::read(path).await.map_err(Error::io(path))?;
            return self.put(rel, data.into()).await;
        }
        if self.size(rel).await?.is_some() {
            return Ok(Put::Existed);
        }
        let upload = self
            .inner
            .put_multipart(&StorePath::from(rel))
            .await
            .map_err(err(rel))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut f = tokio::fs::File::open(path).await.map_err(Error::io(path))?;
        let sent: Result<()> = async {
            loop {
                let mut buf = Vec::with_capacity(READ);
                (&mut f)
                    .take(READ as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(Error::io(path))?;
                if buf.is_empty() {
                    return Ok(());
                }
                w.wait_for_capacity(2).await.map_err(err(rel))?;
                w.put(buf.into());
            }
        }
        .await;
        match sent {
            Ok(()) => {
                w.finish().await.map_err(err(rel))?;
            }
            Err(e) => {
                let _ = w.abort().await;
                return Err(e);
            }
        }
        Ok(Put::Created)
    }

    /// Removes the file at `rel`; `false` when there was none.
    pub async fn delete(&self, rel: &str) -> Result<bool> {
        match self.inner.delete(&StorePath::from(rel)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(err(rel)(e)),
        }
    }

    /// Every file under `prefix` (`objects`, `deltas`, `packs`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut files = self.inner.list(Some(&StorePath::from(prefix)));
        while let Some(m) = files.next().await {
            let m = m.map_err(err(prefix))?;
            out.push(Listed {
                rel: m.location.to_string(),
                size: m.size,
                modified: m.last_modified.timestamp(),
            });
        }
        Ok(out)
    }

    /// In a local folder: the file at `rel` and its folder on disk.
    async fn sync(&self, rel: &str) -> Result<()> {
        if let Some(root) = &self.local {
            let path = root.join(rel);
            blocking_io(root.join(rel), move || {
                std::fs::File::open(&path)?.sync_all()?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Size of a stored file, or `None`.
    pub async fn size(&self, rel: &str) -> Result<Option<u64>> {
        match self.inner.head(&StorePath::from(rel)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(rel)(e)),
        }
    }

    /// Answers when the store does (a listing of one missing prefix).
    pub async fn ping(&self) -> Result<()> {
        match self.inner.head(&StorePath::from("readyz-probe/none")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err("readyz-probe/none")(e)),
        }
    }

    /// A byte range of a stored file (the whole file when `None`) as a stream, with the
    /// file's length; `None` when the file is not stored.
    pub async fn open_range(
        &self,
        rel: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<(u64, ByteStream)>> {
        let opts = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let r = match self.inner.get_opts(&StorePath::from(rel), opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(err(rel)(e)),
        };
        let len = r.meta.size;
        let got = r.range.clone();
        let owned = rel.to_string();
        let stream: ByteStream = match r.payload {
            // A local file: read it in large chunks on the blocking pool, not 8 KiB at a time.
            GetResultPayload::File(file, _) => file_stream(file, got, owned),
            GetResultPayload::Stream(s) => s
                .map(move |c| {
                    c.map_err(|source| Error::Store {
                        path: owned.clone(),
                        source,
                    })
                })
                .boxed(),
        };
        Ok(Some((len, stream)))
    }

    /// A byte range of a stored file as a stream.
    pub async fn get_range(&self, rel: &str, range: Range<u64>) -> Result<ByteStream> {
        match self.open_range(rel, Some(range)).await? {
            Some((_, s)) => Ok(s),
            None => Err(Error::NotFound(format!("no file {rel}"))),
        }
    }

    /// A whole stored file.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let r = self
            .inner
            .get(&StorePath::from(rel))
            .await
            .map_err(err(rel))?;
        r.bytes().await.map_err(err(rel))
    }
}

fn file_stream(file: std::fs::File, range: Range<u64>, rel: String) -> ByteStream {
    let io = move |rel: &str, source: std::io::Error| Error::Io {
        path: rel.into(),
        source,
    };
    let file = Arc::new(file);
    futures::stream::try_unfold(
        (file, range.start, range.end, rel),
        move |(file, pos, end, rel)| async move {
            if pos >= end {
                return Ok(None);
            }
            let n = ((end - pos) as usize).min(FILE_CHUNK);
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    match f.read_at(&mut buf[got..], pos + got as u64) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(got);
                Ok(buf)
            })
            .await
            .map_err(|e| io(&rel, std::io::Error::other(e)))?
            .map_err(|e| io(&rel, e))?;
            if read.is_empty() {
                return Err(io(
                    &rel,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file ended at byte {pos}, before {end}"),
                    ),
                ));
            }
            let next = pos + read.len() as u64;
            Ok(Some((Bytes::from(read), (file, next, end, rel))))
        },
    )
    .boxed()
}

/// Runs `f` (file work in the local folder) on the blocking pool; its error, or a panic
/// there, is an I/O error on `path`.
async fn blocking_io<T: Send + 'static>(
    path: std::path::PathBuf,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| Error::Io { path, source })
}
