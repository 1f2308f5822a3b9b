//! JSON bodies of the HTTP API (`docs/FORMAT.md`, "HTTP API"). Types only, no logic.

use serde::{Deserialize, Serialize};

use super::container::Method;
use super::hash::Hash;

/// `GET /v1/products/{product}/channels/{channel}/check?current=V&device=ID&result=R&attempted=V&pin=V`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResponse {
    pub product: String,
    pub channel: String,
    /// The version the channel points at, if any.
    pub latest: Option<String>,
    /// Set when the device should move: the target version and what it costs.
    pub update: Option<UpdateOffer>,
    /// The channel is paused by an operator: nothing is offered until it resumes.
    #[serde(default)]
    pub paused: bool,
    /// When to ask again, in seconds (the server's poll interval with jitter).
    #[serde(default)]
    pub next_check_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    pub version: String,
    /// Bytes the device downloads, per the plan from its current version.
    pub download_bytes: u64,
    /// Bytes of all regular files of the target tree.
    pub image_bytes: u64,
    /// Set when `version` is older than the device's: the operator's signed permission
    /// (`format::channel`). A device refuses an older version without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<DowngradeOffer>,
}

/// A signed downgrade statement (`format::channel::Downgrade`) in an API body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowngradeOffer {
    /// The statement bytes, standard base64.
    pub statement: String,
    /// The 64-byte Ed25519 signature over them, standard base64.
    pub signature: String,
}

/// Last result a device reports with its check (from its `state/status.json`).
pub const RESULTS: [&str; 3] = ["ok", "failed", "rolled-back"];

/// `POST /v1/products/{product}/channels/{channel}/promote`: point the channel at a release,
/// at once or in waves.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub version: String,
    /// Share of devices (by a stable hash of their id) offered the release at first,
    /// 0 to 100; 100 when absent.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Added to the share every `step_secs` seconds (0: raised by hand only).
    #[serde(default)]
    pub step_percent: Option<f64>,
    #[serde(default)]
    pub step_secs: Option<u64>,
    /// A release every device older than it must install first.
    #[serde(default)]
    pub floor: Option<String>,
    /// Stop the rollout when more than this share (0 to 1) of the devices that tried the
    /// release report `failed` or `rolled-back`...
    #[serde(default)]
    pub max_failure_rate: Option<f64>,
    /// ...once at least this many have reported (default 10).
    #[serde(default)]
    pub min_reports: Option<u64>,
}

/// `POST /v1/products/{product}/channels/{channel}/rollout`: set the share by hand.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub percent: f64,
}

/// `POST /v1/products/{product}/channels/{channel}/rollback`: a signed downgrade.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RollbackRequest {
    #[serde(flatten)]
    pub downgrade: DowngradeOffer,
}

/// `GET /v1/products/{product}/channels/{channel}` (and the answer of every channel
/// operation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelStatus {
    pub product: String,
    pub channel: String,
    /// The release the channel points at.
    pub version: Option<String>,
    pub paused: bool,
    /// The version of the signed downgrade in force, if the channel was rolled back.
    pub downgrade: Option<String>,
    pub rollout: Option<RolloutStatus>,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: i64,
    pub version: String,
    /// What devices outside the wave are offered.
    pub previous: Option<String>,
    pub floor: Option<String>,
    /// `active`, `stopped` (by hand or on failures) or `superseded`.
    pub state: String,
    pub reason: Option<String>,
    /// The share in force now, with the steps taken so far.
    pub percent: f64,
    pub start_percent: f64,
    pub step_percent: f64,
    pub step_secs: u64,
    pub max_failure_rate: Option<f64>,
    pub min_reports: u64,
    pub started_at: i64,
    /// Devices whose last attempt was this version, and how many of them failed or rolled
    /// back.
    pub reports: u64,
    pub failures: u64,
}

/// One line of `GET /v1/products/{product}/audit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// The token name of the operator, or `server` for automatic actions.
    pub who: String,
    pub product: String,
    pub channel: Option<String>,
    pub action: String,
    pub detail: serde_json::Value,
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
    /// Packs (stored first) for devices coming from `from_version`, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<Hash>,
    /// Delta methods the publisher was told never to send (`--skip-method`): the server's
    /// own deltas for pairs ending at this release do not use them either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_methods: Vec<Method>,
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
