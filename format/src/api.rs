//! JSON bodies of the HTTP API (`docs/FORMAT.md`, "HTTP API"). Types only, no logic.
//!
//! Every product, channel and version name in a body (the names a device acts on in a
//! check's answer, the ones an operator or publisher sends, the ones they are answered with)
//! is a [`Name`], checked when the body is read; on the wire it is a plain string.

use serde::{Deserialize, Serialize};

use super::container::Method;
use super::hash::Hash;
use super::name::Name;

/// `GET /v1/products/{product}/channels/{channel}/check?current=V&device=ID&result=R&attempted=V&pin=V`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResponse {
    pub product: Name,
    pub channel: Name,
    /// The version the channel points at, if any.
    pub latest: Option<Name>,
    /// Set when the device should move: the target version and what it costs.
    pub update: Option<UpdateOffer>,
    /// The channel is paused by an operator: nothing is offered until it resumes.
    #[serde(default)]
    pub paused: bool,
    /// When to ask again, in seconds (the server's poll interval with jitter).
    #[serde(default)]
    pub next_check_secs: Option<u64>,
    /// The rollout has an update for this device, but its egress budget for this hour is
    /// spent: ask again later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paced: bool,
    /// The answer as the server signed it (`format::answer`): a device acts on that, never
    /// on the fields above, which are for people and older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedAnswer>,
    /// The product's release key rotations, oldest first (`format::rotation`): each signed
    /// by the key it replaces, so they need no other signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<DelegationOffer>,
}

/// A signed answer (`format::answer::Answer`) in an API body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnswer {
    /// The answer's bytes, standard base64.
    pub answer: String,
    /// The 64-byte Ed25519 signature over them, standard base64.
    pub signature: String,
    /// The release key's delegation to the key that signed it (absent when a release key
    /// signed the answer itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<DelegationOffer>,
}

/// A signed delegation statement (`format::answer::Delegation`) in an API body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationOffer {
    /// The statement's bytes, standard base64.
    pub statement: String,
    /// The release key's signature over them, standard base64.
    pub signature: String,
}

/// `POST /v1/products/{product}/keys`: a new release key for the product, introduced by a
/// rotation statement the current key signed, with the new key's delegation to the
/// server's answer key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    pub rotation: DelegationOffer,
    pub delegation: DelegationOffer,
}

/// `POST /v1/products/{product}/devices/{device}/key`: a device's public key (the enroll
/// scope), with which it signs its check-ins from then on (`format::checkin`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The `.pub` text of the device's key.
    pub public_key: String,
}

/// The answer to an enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub product: Name,
    pub device: String,
    pub key_id: String,
}

/// The answer to a key rotation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    pub product: Name,
    /// Key ids (`PublicKey::id`) of the key replaced and of the product's key now.
    pub old_key_id: String,
    pub key_id: String,
}

/// `GET /v1/answer-key`: the server's online key, which signs its answers once a release key
/// delegated to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerKey {
    /// The `.pub` text of the key.
    pub public_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    pub version: Name,
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
/// at once or in waves. [`PromoteRequest::new`] promotes to everyone at once.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub version: Name,
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
    pub floor: Option<Name>,
    /// Stop the rollout when more than this share (0 to 1) of the devices that tried the
    /// release report `failed` or `rolled-back`...
    #[serde(default)]
    pub max_failure_rate: Option<f64>,
    /// ...once at least this many have reported (default 10).
    #[serde(default)]
    pub min_reports: Option<u64>,
    /// Pace the rollout by egress as well as by share: devices in the wave are admitted
    /// (offered the release) while the downloads their plans name, summed over the clock
    /// hour, stay within this many bytes. A device once admitted stays admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_hour: Option<u64>,
    /// The failure-rate stop counts only reports of enrolled devices, signed by their keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed_reports_only: bool,
}

impl PromoteRequest {
    /// Points the channel at `version` for every device at once, with no floor and no
    /// automatic stop: set the other fields on the result for a rollout in waves.
    pub fn new(version: Name) -> PromoteRequest {
        PromoteRequest {
            version,
            percent: None,
            step_percent: None,
            step_secs: None,
            floor: None,
            max_failure_rate: None,
            min_reports: None,
            max_bytes_per_hour: None,
            signed_reports_only: false,
        }
    }
}

/// `POST /v1/products/{product}/channels/{channel}/rollout`: change the waves of the
/// channel's rollout after it started. Absent fields keep their value; at least one is
/// given. Setting the share (or the steps) restarts a stopped rollout and counts steps
/// from now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The share offered now, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Added to the share every `step_secs` seconds (0: raised by hand only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_secs: Option<u64>,
    /// The failure share (0 to 1) that stops the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_reports: Option<u64>,
    /// The egress budget in bytes per hour; 0 removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_hour: Option<u64>,
}

impl RolloutRequest {
    /// Sets the share only.
    pub fn percent(percent: f64) -> RolloutRequest {
        RolloutRequest {
            percent: Some(percent),
            ..RolloutRequest::default()
        }
    }
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
    pub product: Name,
    pub channel: Name,
    /// The release the channel points at.
    pub version: Option<Name>,
    pub paused: bool,
    /// The version of the signed downgrade in force, if the channel was rolled back.
    pub downgrade: Option<Name>,
    pub rollout: Option<RolloutStatus>,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: i64,
    pub version: Name,
    /// What devices outside the wave are offered.
    pub previous: Option<Name>,
    pub floor: Option<Name>,
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
    /// The egress budget (bytes per hour), if the rollout is paced by one...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_hour: Option<u64>,
    /// ...what this hour's admissions charged against it...
    #[serde(default)]
    pub egress_bytes_this_hour: u64,
    /// ...and the devices it admitted so far.
    #[serde(default)]
    pub devices_admitted: u64,
    /// The failure-rate stop counts signed reports only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed_reports_only: bool,
}

/// One line of `GET /v1/products/{product}/audit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// The token name of the operator, or `server` for automatic actions.
    pub who: String,
    pub product: Name,
    pub channel: Option<Name>,
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
    /// Channel to point at the new release (needs the operate scope).
    pub channel: Option<Name>,
    /// Share (0-100) of the channel's devices offered the release at first; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// The release devices are expected to come from; its plan is computed at once.
    pub from_version: Option<Name>,
    /// Packs (stored first) for devices coming from `from_version`, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<Hash>,
    /// Delta methods the publisher was told never to send (`--skip-method`): the server's
    /// own deltas for pairs ending at this release do not use them either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_methods: Vec<Method>,
    /// The release key's delegation to the server's online key (`GET /v1/answer-key`),
    /// signed with the same key as the manifest: the server signs its answers with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<DelegationOffer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishResponse {
    pub product: Name,
    pub version: Name,
    pub channel: Option<Name>,
    /// Bytes a device on `from_version` downloads.
    pub download_bytes: Option<u64>,
}

/// Every error answer of the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_answer_with_a_bad_name_is_refused_when_read() {
        let good = r#"{"product":"demo","channel":"stable","latest":"1.1",
            "update":{"version":"1.1","download_bytes":1,"image_bytes":2}}"#;
        let c: CheckResponse = serde_json::from_str(good).unwrap();
        assert_eq!(c.update.as_ref().unwrap().version, "1.1");
        // Unchanged on the wire.
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["latest"], "1.1");
        assert_eq!(back["update"]["version"], "1.1");
        for bad in [
            good.replace(r#""version":"1.1""#, r#""version":"../../etc""#),
            good.replace(r#""latest":"1.1""#, r#""latest":"-x""#),
            good.replace(r#""channel":"stable""#, r#""channel":"a/b""#),
        ] {
            let e = serde_json::from_str::<CheckResponse>(&bad).unwrap_err();
            assert!(e.to_string().contains("not a valid name"), "{e}");
        }
    }

    #[test]
    fn operator_and_publisher_bodies_read_names_and_keep_their_json() {
        let promote = r#"{"version":"2.0","floor":"1.0","percent":10.0}"#;
        let p: PromoteRequest = serde_json::from_str(promote).unwrap();
        assert_eq!(
            (p.version.as_str(), p.floor.as_deref()),
            ("2.0", Some("1.0"))
        );
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(
            (&back["version"], &back["floor"]),
            (&"2.0".into(), &"1.0".into())
        );
        let e = serde_json::from_str::<PromoteRequest>(r#"{"version":"2.0","floor":"a/b"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("not a valid name"), "{e}");

        let publish = r#"{"manifest":"","signature":"","public_key":"","channel":"stable","from_version":null}"#;
        let r: PublishRequest = serde_json::from_str(publish).unwrap();
        assert_eq!(r.channel.as_deref(), Some("stable"));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::from_str::<serde_json::Value>(publish).unwrap()
        );
        for bad in [
            publish.replace(r#""stable""#, r#""-rf""#),
            publish.replace("null", r#""../1.0""#),
        ] {
            let e = serde_json::from_str::<PublishRequest>(&bad).unwrap_err();
            assert!(e.to_string().contains("not a valid name"), "{e}");
        }
        let status = r#"{"product":"demo","channel":"stable","version":"1.0","paused":false,
            "downgrade":null,"rollout":null,"updated_at":0}"#;
        let c: ChannelStatus = serde_json::from_str(status).unwrap();
        assert_eq!(c.version.as_deref(), Some("1.0"));
        let e =
            serde_json::from_str::<ChannelStatus>(&status.replace("demo", "de mo")).unwrap_err();
        assert!(e.to_string().contains("not a valid name"), "{e}");
    }
}
