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
    Format(#[from] deltaroot_format::Error),
    #[error(transparent)]
    Engine(#[from] deltaroot_engine::Error),
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
    /// `inspect-elf`: the layout parser refused some of the files (each named on stdout).
    #[error("the ELF method's layout parser refused {refused} of {files} files")]
    ElfRefused { refused: usize, files: usize },
    /// `--version` names a release the destination holds already.
    #[error(
        "{at}: product {product} already has a release {version}; publish under another --version"
    )]
    VersionExists {
        product: String,
        version: String,
        at: String,
    },
    /// `--from-version` names a release the destination does not hold.
    #[error("{at}: product {product} has no release {version} (--from-version): publish it first, or check the version")]
    NoRelease {
        product: String,
        version: String,
        at: String,
    },
    /// The destination's copy of the `--from-version` release does not verify with the
    /// publisher's key, or is not the release it is stored as.
    #[error("{at}: release {version} of {product} is not one this key signed: {reason}")]
    ReleaseNotVerified {
        product: String,
        version: String,
        at: String,
        reason: String,
    },
    /// The OLD tree is not the tree of the `--from-version` release.
    #[error(
        "OLD {} is not release {version} of {product}: {count} path{} differ{}, first: {first} ({what}); \
         publish from that release's own tree, or omit OLD and --from-version",
        path.display(), if *count == 1 { "" } else { "s" }, if *count == 1 { "s" } else { "" }
    )]
    OldIsNotRelease {
        path: PathBuf,
        product: String,
        version: String,
        count: usize,
        first: String,
        what: &'static str,
    },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
