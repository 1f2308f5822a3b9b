//! JSON bodies of the HTTP API (`docs/FORMAT.md`, "HTTP API"). Types only, no logic.

use serde::{Deserialize, Serialize};

use super::hash::Hash;

/// `GET /v1/products/{product}/channels/{channel}/check?current=V`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResponse {
    pub product: String,
    pub channel: String,
    /// The version the channel points at, if any.
    pub latest: Option<String>,
    /// Set when the device should move: the target version and what it costs.
    pub update: Option<UpdateOffer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    pub version: String,
    /// Bytes the device downloads, per the plan from its current version.
    pub download_bytes: u64,
    /// Bytes of all regular files of the target tree.
    pub image_bytes: u64,
}

/// `POST /v1/stored`: which of these does the server hold already?
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredRequest {
    pub objects: Vec<Hash>,
    /// (source, target) pairs.
    pub deltas: Vec<(Hash, Hash)>,
}

/// Stored sizes in request order; `None` where the server has nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredResponse {
    pub objects: Vec<Option<u64>>,
    pub deltas: Vec<Option<u64>>,
}

/// `POST /v1/products/{product}/releases`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The manifest bytes, standard base64.
    pub manifest: String,
    /// The 64-byte signature, standard base64.
    pub signature: String,
    /// The signer's public key, as in a `.pub` file.
    pub public_key: String,
    /// Channel to point at the new release.
    pub channel: Option<String>,
    /// The release devices are expected to come from; its plan is computed at once.
    pub from_version: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishResponse {
    pub product: String,
    pub version: String,
    pub channel: Option<String>,
    /// Bytes a device on `from_version` downloads.
    pub download_bytes: Option<u64>,
}

/// Every error answer of the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
