//! The one error type of the device library. Every variant names what it concerns: the
//! path, URL, version or content address, so the message alone says what went wrong.

use std::io;
use std::path::PathBuf;

/// Anything that can go wrong on the device side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The wire format or a decoder refused something (a manifest, a signature, a delta,
    /// a pack, a content that hashes wrong).
    #[error(transparent)]
    Format(#[from] deltaroot_format::Error),

    #[error("manifest names product {found:?} version {found_version:?}, expected {expected:?} version {expected_version:?}")]
    WrongRelease {
        expected: String,
        expected_version: String,
        found: String,
        found_version: String,
    },

    // --- files and trees ---
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "deployment {version} does not match its manifest ({count} differences), first: {first}"
    )]
    Verify {
        version: String,
        count: usize,
        first: String,
    },

    // --- network ---
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("GET {url}: server answered {status}: {body}")]
    HttpStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url}: download ended after {got} of {want} bytes")]
    Truncated { url: String, got: u64, want: u64 },
    #[error("GET {url}: answer is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    /// A server's answer (to a check, or a plan) that the device does not take (unsigned,
    /// signed by an untrusted key, expired, older than one it took, about another question).
    #[error("{url}: {source}")]
    Answer {
        url: String,
        #[source]
        source: deltaroot_format::Error,
    },
    #[error("GET {url}: the update passed its deadline of {secs} s (update_deadline_secs)")]
    Deadline { url: String, secs: u64 },

    /// A file the source does not hold (a release folder's missing delta, plan or release).
    #[error("{location}: not in the release folder")]
    Missing { location: String },

    // --- the plan (held to the signed manifest, signed or not) ---
    #[error("plan for version {version}: {entry} is declared {declared} bytes, more than its bound of {bound} bytes from the signed manifest")]
    PlanBound {
        version: String,
        entry: String,
        declared: u64,
        bound: u64,
    },
    #[error("plan for version {version}: {entry} {reason}")]
    PlanEntry {
        version: String,
        entry: String,
        reason: String,
    },

    // --- the device ---
    #[error("{path}: not enough space for version {version}: it needs {needed} bytes, {available} are available")]
    NoSpace {
        path: PathBuf,
        version: String,
        needed: u64,
        available: u64,
    },
    /// A health check or hook that failed, overran its limit or could not start.
    #[error("{script}: {what}")]
    Script { script: PathBuf, what: String },
    #[error("device root {root}: {what}")]
    Device { root: PathBuf, what: String },
    #[error("configuration {path}: {what}")]
    Config { path: PathBuf, what: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The file system is full (or the quota spent): [`Error::NoSpace`], or an I/O error
    /// `ENOSPC` / `EDQUOT`.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Io { source, .. } => {
                let code = source.raw_os_error();
                code == Some(rustix::io::Errno::NOSPC.raw_os_error())
                    || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
            }
            _ => false,
        }
    }

    /// A delta that cannot give its content: damaged, of an unknown method, not on the
    /// server or in the folder, or larger than its plan said. The device fetches the whole object instead;
    /// network and local errors are not this.
    pub fn is_unusable_delta(&self) -> bool {
        match self {
            Error::Format(e) => e.is_unusable_delta(),
            Error::TooLarge { .. } => true,
            Error::HttpStatus { status, .. } => matches!(status, 404 | 410),
            Error::Missing { .. } => true,
            _ => false,
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
