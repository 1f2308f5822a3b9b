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
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, PutPayload};

use crate::error::{Error, Result};

/// Bytes read from a local file per chunk of a download.
const FILE_CHUNK: usize = 256 << 10;

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// `file:///…` or `s3://bucket/prefix`, for messages.
    url: String,
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
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(err("/"))?;
        Ok(Store {
            inner: Arc::new(fs),
            url: format!("file://{}", dir.display()),
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
            url: url.to_string(),
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

    /// Stores `data` at `rel`. In a local folder the file and its folder are on disk when
    /// this returns (the folder store writes a temporary file and renames it; without the
    /// syncs a power cut could leave a release recorded in the database whose files are
    /// empty). S3 acknowledges a PUT only once it is durable.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.inner
            .put(&StorePath::from(rel), PutPayload::from(data))
            .await
            .map_err(err(rel))?;
        if let Some(root) = &self.local {
            let path = root.join(rel);
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::File::open(&path)?.sync_all()?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| Error::Io {
                path: root.join(rel),
                source,
            })?;
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
