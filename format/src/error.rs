//! The one error type of the wire format and its decoders. Every variant names what it
//! concerns: the path, version or content address, so the message alone says what went wrong.

use std::io;
use std::path::PathBuf;

use crate::hash::Hash;
use crate::wire::WireError;

/// Anything that can go wrong while reading the wire format or decoding a delta.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- manifests and signatures ---
    #[error("manifest is malformed: {0}")]
    ManifestWire(#[from] WireError),
    #[error("manifest entry {path}: {what}")]
    ManifestEntry { path: String, what: String },
    #[error("shared path {path}: {what}")]
    SharedPath { path: String, what: String },
    #[error("{field} {value:?} is not a valid name (1-64 of A-Z a-z 0-9 . _ + ~ -, not starting with . or -)")]
    BadName { field: &'static str, value: String },
    #[error("{what} is not a deltaroot {kind} key (expected one line `{prefix}<base64>`)")]
    KeyText {
        what: String,
        kind: &'static str,
        prefix: &'static str,
    },
    #[error("signature is {0} bytes, not 64")]
    SignatureLength(usize),
    #[error("signature of the manifest does not verify against the trusted key(s) {keys}")]
    BadSignature { keys: String },
    #[error("manifest is {0} bytes, over the limit of {max}", max = crate::sign::MAX_MANIFEST_BYTES)]
    ManifestTooLarge(usize),
    // --- deltas and objects ---
    #[error("delta {what}: malformed: {reason}")]
    DeltaMalformed { what: String, reason: String },
    #[error("delta {what}: unknown method {method}")]
    DeltaMethod { what: String, method: u8 },
    #[error("delta {what}: {reason}")]
    DeltaMismatch { what: String, reason: String },
    #[error("{what}: {method} payload does not decode: {reason}")]
    DeltaPayload {
        what: String,
        method: &'static str,
        reason: String,
    },
    #[error("{what}: content hashes to {got}, expected {want}")]
    ContentHash { what: String, got: Hash, want: Hash },
    #[error("{what}: content is {got} bytes, expected {want}")]
    ContentLength { what: String, got: u64, want: u64 },
    #[error("pack {pack}: malformed: {reason}")]
    PackMalformed { pack: String, reason: String },
    #[error("plan {what}: malformed: {reason}")]
    PlanMalformed { what: String, reason: String },
    #[error("plan is missing content {0}: the server has no object for it")]
    MissingObject(Hash),

    // --- files and trees ---
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Unsupported { path: PathBuf, what: String },
    // --- signed answers (`answer.rs`) ---
    #[error("{what} refused: {reason}")]
    Refused { what: String, reason: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// A delta that cannot give its content: damaged or of an unknown method. The device
    /// fetches the whole object instead; local errors are not this.
    pub fn is_unusable_delta(&self) -> bool {
        matches!(
            self,
            Error::DeltaMalformed { .. }
                | Error::DeltaMethod { .. }
                | Error::DeltaMismatch { .. }
                | Error::DeltaPayload { .. }
                | Error::PackMalformed { .. }
                | Error::ContentHash { .. }
                | Error::ContentLength { .. }
        )
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
