//! The one error type of the publisher library.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Input { path: PathBuf, what: String },
    #[error(transparent)]
    Format(#[from] deltaroot_client::Error),
    #[error("{method} encoding of {what} failed: {reason}")]
    Encode {
        method: &'static str,
        what: String,
        reason: String,
    },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: server answered {status}: {body}")]
    Server {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
