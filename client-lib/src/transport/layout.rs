//! What a device reads from a static release folder (`deltaroot publish --out DIR`,
//! `docs/FORMAT.md` §8.5), wherever the folder is: mounted ([`super::Folder`]) or served
//! by any web server ([`super::Http::release_folder`]).
//!
//! **Check.** A folder has no server to ask: the offer is the device's pin if it has one,
//! else the version the channel's `latest` file names (none if there is no such file). It
//! is offered when it is not the running version, nor one the device rolled back from (as a
//! server does); its release must be in the folder. `download_bytes` is that of the plan
//! the device will use, `image_bytes` the sum of the distinct contents of the release (its
//! plan from nothing). A folder carries no signed downgrade statement: an older release
//! than the running one is refused by the agent unless the device is pinned to it or an
//! operator installs it by name (`deltaroot-agent install`). Device id and last result are
//! not reported anywhere.
//!
//! **Plan.** `plans/<from>/<to>` when the folder holds it, else `plans/-/<to>` (the whole
//! release), as the server does for a version it does not know. Beside each plan,
//! `<plan>.sig`: the release key's signature over the pair and the plan's bytes
//! (`deltaroot_format::answer::sign_folder_plan`). Once the agent has said which release keys
//! it trusts ([`super::Transport::trust_plans`]), a plan without a signature by one of them is
//! refused: whoever writes the folder cannot choose what a device downloads.

use std::path::PathBuf;

use super::{CheckQuery, MAX_PLAN_BYTES};
use crate::error::{Error, Result};
use deltaroot_format::api::{CheckResponse, UpdateOffer};
use deltaroot_format::sign::MAX_MANIFEST_BYTES;
use deltaroot_format::{Name, Plan, PublicKey};

/// The files of a release folder.
pub(crate) trait Files {
    /// The file at `rel` whole, refused past `limit` bytes; [`Error::Missing`] when the
    /// folder does not hold it.
    fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>>;

    /// Where `rel` is, for messages (a path, a URL).
    fn locate(&self, rel: &str) -> String;

    /// Whether the folder holds `rel`.
    fn holds(&self, rel: &str, limit: u64) -> Result<bool> {
        match self.read(rel, limit) {
            Ok(_) => Ok(true),
            Err(Error::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The version `channels/<c>/latest` names, if the file is there.
fn latest(files: &impl Files, product: &Name, channel: &Name) -> Result<Option<Name>> {
    let rel = format!("v1/products/{product}/channels/{channel}/latest");
    let bytes = match files.read(&rel, 256) {
        Err(Error::Missing { .. }) => return Ok(None),
        other => other?,
    };
    let text = String::from_utf8_lossy(&bytes);
    Name::new("version", text.trim())
        .map(Some)
        .map_err(|e| Error::Config {
            path: PathBuf::from(files.locate(&rel)),
            what: e.to_string(),
        })
}

/// What the folder offers the device `q` describes.
pub(crate) fn check(files: &impl Files, q: &CheckQuery<'_>) -> Result<CheckResponse> {
    let latest = latest(files, q.product, q.channel)?;
    let target = q.pin.or(latest.as_ref());
    // As a server does: a device that rolled back from a release is not offered it again.
    let rolled_back = |t: &Name| q.last == Some(("rolled-back", t));
    let update = match target {
        Some(t) if Some(t) != q.current && !rolled_back(t) => {
            let rel = format!("v1/products/{}/releases/{t}/manifest", q.product);
            if !files.holds(&rel, MAX_MANIFEST_BYTES as u64)? {
                return Err(Error::Missing {
                    location: files.locate(&rel),
                });
            }
            // Sizes to show only: the plan a device downloads by is checked by `plan`.
            let plan = plan(files, q.product, q.current, t, None)?;
            let whole = match q.current {
                Some(_) => plan_of(files, (q.product, None, t), None)?,
                None => plan.clone(),
            };
            Some(UpdateOffer {
                version: t.clone(),
                download_bytes: plan.download_bytes,
                image_bytes: whole.items.iter().map(|i| i.size).sum(),
                downgrade: None,
            })
        }
        _ => None,
    };
    Ok(CheckResponse {
        product: q.product.clone(),
        channel: q.channel.clone(),
        latest,
        update,
        paused: false,
        next_check_secs: None,
        paced: false,
        signed: None,
        rotations: Vec::new(),
    })
}

/// The plan from `from` to `to`: the pair's when the folder holds it, else the whole
/// release's.
/// With `trust`, the plan must be signed by one of those release keys (its `.sig` file).
pub(crate) fn plan(
    files: &impl Files,
    product: &Name,
    from: Option<&Name>,
    to: &Name,
    trust: Option<&[PublicKey]>,
) -> Result<Plan> {
    if let Some(f) = from {
        match plan_of(files, (product, Some(f), to), trust) {
            Err(Error::Missing { .. }) => {}
            other => return other,
        }
    }
    plan_of(files, (product, None, to), trust)
}

fn plan_of(
    files: &impl Files,
    (product, from, to): (&Name, Option<&Name>, &Name),
    trust: Option<&[PublicKey]>,
) -> Result<Plan> {
    let rel = format!(
        "v1/products/{product}/plans/{}/{to}",
        from.map_or("-", |f| f.as_str())
    );
    let rel = rel.as_str();
    let bytes = files.read(rel, MAX_PLAN_BYTES)?;
    if let Some(trusted) = trust {
        let sig = match files.read(&format!("{rel}.sig"), 1024) {
            Ok(sig) => Some(sig),
            Err(Error::Missing { .. }) => None,
            Err(e) => return Err(e),
        };
        let pair = (product.as_str(), from.map(|f| f.as_str()), to.as_str());
        deltaroot_format::answer::verify_folder_plan(trusted, pair, &bytes, sig.as_deref())
            .map_err(|e| Error::Answer {
                url: files.locate(rel),
                source: e,
            })?;
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::Config {
        path: PathBuf::from(files.locate(rel)),
        what: format!("not a plan: {e}"),
    })
}
