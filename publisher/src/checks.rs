//! What `publish` checks with the destination before it encodes anything: that `--version`
//! is free, and that OLD is the tree of release `--from-version` as the destination holds it
//! (its signed manifest, verified with the publisher's own key).
//!
//! Both used to be found out late or never: a taken version was refused by the server only
//! after the whole encode and upload (leaving every uploaded object orphaned), and an OLD that
//! was not the release devices run was accepted, so its deltas started from contents devices
//! do not hold and devices downloaded whole objects instead.

use std::path::Path;

use deltaroot_format::tree::{self, Difference};
use deltaroot_format::{Entry, PublicKey, VerifiedManifest};

use crate::error::{Error, Result};
use crate::sink::Sink;

/// Refuses a `version` of `product` the destination holds already.
pub fn version_is_free(sink: &dyn Sink, product: &str, version: &str) -> Result<()> {
    match sink.release(product, version)? {
        None => Ok(()),
        Some(_) => Err(Error::VersionExists {
            product: product.into(),
            version: version.into(),
            at: sink.release_at(product, version),
        }),
    }
}

/// The destination's release `version` of `product`, its signature verified with `keys` (the
/// publisher's own, and the earlier keys of the product a rotation replaced) and its product
/// and version checked against where it is stored.
pub fn fetch_release(
    sink: &dyn Sink,
    product: &str,
    version: &str,
    keys: &[PublicKey],
) -> Result<VerifiedManifest> {
    let at = || sink.release_at(product, version);
    let (bytes, signature) = sink
        .release(product, version)?
        .ok_or_else(|| Error::NoRelease {
            product: product.into(),
            version: version.into(),
            at: at(),
        })?;
    let not_verified = |reason: String| Error::ReleaseNotVerified {
        product: product.into(),
        version: version.into(),
        at: at(),
        reason,
    };
    let signed = VerifiedManifest::verify(bytes, signature, keys)
        .map_err(|e| not_verified(e.to_string()))?;
    let m = signed.manifest();
    if m.product != product || m.version != version {
        return Err(not_verified(format!(
            "the manifest names release {} of {}",
            m.version, m.product
        )));
    }
    Ok(signed)
}

/// Refuses an OLD tree (scanned from `path`) whose entries are not exactly `release`'s.
pub fn old_is_release(path: &Path, release: &VerifiedManifest, old: &[Entry]) -> Result<()> {
    let m = release.manifest();
    let diffs = differences(&m.entries, old);
    match diffs.first() {
        None => Ok(()),
        Some((first, what)) => Err(Error::OldIsNotRelease {
            path: path.to_owned(),
            product: m.product.clone(),
            version: m.version.clone(),
            count: diffs.len(),
            first: first.clone(),
            what,
        }),
    }
}

/// Every path where `old` differs from `release` (both sorted by path), in path order, with
/// what differs first: `missing from OLD`, `not in the release`, or what
/// [`tree::compare`] names (`type`, `content`, `mode`, …).
pub fn differences(release: &[Entry], old: &[Entry]) -> Vec<(String, &'static str)> {
    tree::compare(release, old)
        .into_iter()
        .map(|d| {
            let what = match d {
                Difference::Missing(_) => "missing from OLD",
                Difference::Unexpected(_) => "not in the release",
                Difference::Differs { what, .. } => what,
            };
            (d.path().to_string(), what)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltaroot_format::{EntryPath, Hash, Kind, Meta};

    fn file(path: &str, content: &[u8], mode: u32) -> Entry {
        Entry::Node {
            path: EntryPath::new(path.as_bytes()).unwrap(),
            kind: Kind::File {
                size: content.len() as u64,
                hash: Hash::of(content),
            },
            meta: Meta {
                mode,
                ..Meta::default()
            },
        }
    }

    #[test]
    fn differences_name_each_path_in_order_with_what_differs() {
        let release = vec![
            file("a", b"1", 0o644),
            file("b", b"2", 0o644),
            file("c", b"3", 0o644),
            file("e", b"5", 0o644),
        ];
        let old = vec![
            file("a", b"1", 0o644),
            file("b", b"2", 0o755),
            file("c", b"x", 0o644),
            file("d", b"4", 0o644),
        ];
        assert_eq!(
            differences(&release, &old),
            [
                ("b".to_string(), "mode"),
                ("c".to_string(), "content"),
                ("d".to_string(), "not in the release"),
                ("e".to_string(), "missing from OLD"),
            ]
        );
        assert!(differences(&release, &release).is_empty());
    }
}
