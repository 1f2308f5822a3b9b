//! Object storage for objects and deltas, behind `object_store` so a local folder (the
//! default) and S3-compatible storage are one code path. Paths are the same relative paths
//! devices request (`objects/…`, `deltas/…`).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
}

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
        })
    }

    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.inner
            .put(&StorePath::from(rel), PutPayload::from(data))
            .await
            .map_err(err(rel))?;
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

    /// A byte range of a stored file as a stream.
    pub async fn get_range(
        &self,
        rel: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let r = self
            .inner
            .get_opts(&StorePath::from(rel), opts)
            .await
            .map_err(err(rel))?;
        Ok(r.into_stream())
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
