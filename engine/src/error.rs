//! The one error type of the diff engine.

/// What can go wrong while encoding a delta or an object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A candidate did not decode with the device's own decoder, or the input is not what
    /// the method needs.
    #[error(transparent)]
    Format(#[from] deltaroot_format::Error),
    #[error("{method} encoding of {what} failed: {reason}")]
    Encode {
        method: &'static str,
        what: String,
        reason: String,
    },
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
