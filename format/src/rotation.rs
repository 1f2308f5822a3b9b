//! Release key rotation (`docs/FORMAT.md`, "Key rotation"). A [`Rotation`] statement,
//! signed by a product's release key, names the key that replaces it. A device that trusts
//! the old key learns the new one from it and revokes the old one: from then on the old key
//! signs nothing new the device takes (answers' delegations, downgrade statements, manifests
//! of releases created after the rotation); the releases it signed before stay installable.
//! What a device learned is its [`Keyring`] (`state/keys.json`).

use serde::{Deserialize, Serialize};

use crate::api::DelegationOffer;
use crate::error::Error;
use crate::name::Name;
use crate::sign::{PublicKey, SecretKey};
use crate::statement::KeyStatement;

/// First bytes of a rotation statement; the last byte is the format version.
pub const ROTATION_MAGIC: &[u8; 8] = b"DRROTAT1";
/// Largest rotation statement: magic, a name, a key, the time.
pub const MAX_ROTATION_BYTES: usize = crate::statement::MAX_KEY_STATEMENT_BYTES;
/// Most rotations a device takes from one answer, and most keys it learns.
pub const MAX_ROTATIONS: usize = 64;

/// A rotation statement in an API body: the same two base64 fields as a delegation.
pub type RotationOffer = DelegationOffer;

const WHAT: &str = "key rotation statement";

fn refused(reason: impl Into<String>) -> Error {
    crate::statement::refused(WHAT, reason)
}

/// The statement bytes of an API body.
fn decoded(offer: &RotationOffer) -> Result<Vec<u8>, Error> {
    crate::statement::decode_b64(WHAT, "statement", &offer.statement)
}

/// "For `product`, `key` replaces the release key that signs this, from `issued` on."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub product: Name,
    pub key: PublicKey,
    /// Seconds since the Unix epoch: releases the old key signed with a later `created` are
    /// refused once the rotation is known.
    pub issued: u64,
}

impl Rotation {
    fn statement(&self) -> KeyStatement {
        KeyStatement {
            product: self.product.clone(),
            key: self.key.clone(),
            issued: self.issued,
        }
    }

    fn from_statement(s: KeyStatement) -> Rotation {
        Rotation {
            product: s.product,
            key: s.key,
            issued: s.issued,
        }
    }

    /// The exact bytes that are signed.
    pub fn encode(&self) -> Vec<u8> {
        self.statement().encode(ROTATION_MAGIC)
    }

    pub fn decode(bytes: &[u8]) -> Result<Rotation, Error> {
        KeyStatement::decode(ROTATION_MAGIC, WHAT, bytes).map(Self::from_statement)
    }

    /// Signs it with the key being replaced.
    pub fn sign(&self, old: &SecretKey) -> RotationOffer {
        self.statement().sign(ROTATION_MAGIC, old)
    }

    /// Decodes an API body's statement and finds which of `keys` signed it.
    pub fn verify(
        offer: &RotationOffer,
        keys: &[PublicKey],
    ) -> Result<(Rotation, PublicKey), Error> {
        KeyStatement::verify(ROTATION_MAGIC, WHAT, offer, keys)
            .map(|(s, signer)| (Self::from_statement(s), signer))
    }
}

/// The keys a device learned from rotations, and those they revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// `.pub` texts of keys introduced by rotations, in the order learned.
    #[serde(default)]
    pub learned: Vec<String>,
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// A key a rotation replaced, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub key: String,
    /// The rotation's `issued`: releases this key signed are taken only when created before.
    pub at: u64,
}

fn parse(text: &str) -> Option<PublicKey> {
    PublicKey::from_text(text).ok()
}

impl Keyring {
    /// The keys that sign what the device takes now: those it was configured with and those
    /// it learned, less every revoked one.
    pub fn active(&self, configured: &[PublicKey]) -> Vec<PublicKey> {
        let revoked: Vec<PublicKey> = self.revoked.iter().filter_map(|r| parse(&r.key)).collect();
        configured
            .iter()
            .cloned()
            .chain(self.learned.iter().filter_map(|t| parse(t)))
            .filter(|k| !revoked.contains(k))
            .fold(Vec::new(), |mut v, k| {
                if !v.contains(&k) {
                    v.push(k);
                }
                v
            })
    }

    /// Revoked keys with the time from which they sign nothing the device takes.
    pub fn revoked(&self) -> Vec<(PublicKey, u64)> {
        self.revoked
            .iter()
            .filter_map(|r| parse(&r.key).map(|k| (k, r.at)))
            .collect()
    }

    /// Every key the device ever trusted: what the manifests it keeps were signed with.
    pub fn known(&self, configured: &[PublicKey]) -> Vec<PublicKey> {
        let mut all = self.active(configured);
        all.extend(self.revoked().into_iter().map(|(k, _)| k));
        all
    }

    /// Takes the rotations of `product` in order: each one signed by a key active at that
    /// point adds its key and revokes its signer. One signed by no active key is an error
    /// (nothing is learned from it or after it); one already taken changes nothing. Says
    /// whether anything changed.
    pub fn learn(
        &mut self,
        product: &Name,
        configured: &[PublicKey],
        rotations: &[RotationOffer],
    ) -> Result<bool, Error> {
        if rotations.len() > MAX_ROTATIONS {
            return Err(refused(format!(
                "{} rotations, over the limit of {MAX_ROTATIONS}",
                rotations.len()
            )));
        }
        // What leads up to a key trusted already was taken before, or came before the key
        // this device was set up with: only what follows it is new.
        let active = self.active(configured);
        let start = rotations
            .iter()
            .rposition(|o| {
                decoded(o)
                    .and_then(|b| Rotation::decode(&b))
                    .is_ok_and(|r| r.product == *product && active.contains(&r.key))
            })
            .map_or(0, |i| i + 1);
        let mut changed = false;
        for offer in &rotations[start..] {
            let (r, signer) = Rotation::verify(offer, &self.active(configured))?;
            if r.product != *product {
                return Err(refused(format!(
                    "it is for product {}, not {product}",
                    r.product
                )));
            }
            if r.key == signer {
                return Err(refused("it replaces a key with itself"));
            }
            if self.learned.len() >= MAX_ROTATIONS {
                return Err(refused(format!(
                    "this device learned {MAX_ROTATIONS} keys already"
                )));
            }
            let text = r.key.to_text();
            if !self.learned.contains(&text) && !configured.contains(&r.key) {
                self.learned.push(text);
            }
            self.revoked.push(Revoked {
                key: signer.to_text(),
                at: r.issued,
            });
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new("product", s).unwrap()
    }

    fn rotate(old: &SecretKey, new: &SecretKey, issued: u64) -> RotationOffer {
        Rotation {
            product: n("demo"),
            key: new.public(),
            issued,
        }
        .sign(old)
    }

    #[test]
    fn encoding_is_the_documented_bytes() {
        let new = SecretKey::from_seed([2; 32]);
        let r = Rotation {
            product: n("demo"),
            key: new.public(),
            issued: 1_700_000_000,
        };
        let b = r.encode();
        assert_eq!(&b[..13], b"DRROTAT1\x04demo");
        assert_eq!(&b[13..45], &new.public().to_bytes());
        assert_eq!(&b[45..], &[0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0]);
        assert_eq!(Rotation::decode(&b).unwrap(), r);
        for cut in [0, 8, 30, b.len() - 1] {
            assert!(Rotation::decode(&b[..cut]).is_err());
        }
        assert!(Rotation::decode(&[b.as_slice(), b"x"].concat()).is_err());
    }

    #[test]
    fn a_chain_of_rotations_moves_trust_and_revokes_each_old_key() {
        let (k1, k2, k3) = (
            SecretKey::from_seed([1; 32]),
            SecretKey::from_seed([2; 32]),
            SecretKey::from_seed([3; 32]),
        );
        let configured = [k1.public()];
        let chain = [rotate(&k1, &k2, 100), rotate(&k2, &k3, 200)];
        let mut ring = Keyring::default();
        assert!(ring.learn(&n("demo"), &configured, &chain).unwrap());
        assert_eq!(ring.active(&configured), vec![k3.public()]);
        assert_eq!(ring.revoked(), vec![(k1.public(), 100), (k2.public(), 200)]);
        assert_eq!(ring.known(&configured).len(), 3);
        // A device set up with the newest key learns nothing from the chain.
        let mut fresh = Keyring::default();
        assert!(!fresh.learn(&n("demo"), &[k3.public()], &chain).unwrap());
        assert_eq!(fresh, Keyring::default());
        // The same chain again changes nothing.
        let before = ring.clone();
        assert!(!ring.learn(&n("demo"), &configured, &chain).unwrap());
        assert_eq!(ring, before);
    }

    #[test]
    fn rotations_not_signed_by_an_active_key_are_refused() {
        let (k1, k2, rogue) = (
            SecretKey::from_seed([1; 32]),
            SecretKey::from_seed([2; 32]),
            SecretKey::from_seed([9; 32]),
        );
        let configured = [k1.public()];
        let mut ring = Keyring::default();
        // By a stranger.
        let err = ring
            .learn(&n("demo"), &configured, &[rotate(&rogue, &rogue, 1)])
            .unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        // For another product.
        let other = Rotation {
            product: n("other"),
            key: k2.public(),
            issued: 1,
        }
        .sign(&k1);
        assert!(ring.learn(&n("demo"), &configured, &[other]).is_err());
        assert_eq!(ring, Keyring::default());
        // By a key already revoked: the thief of k1 rotating to its own key after k1 -> k2.
        ring.learn(&n("demo"), &configured, &[rotate(&k1, &k2, 100)])
            .unwrap();
        let err = ring
            .learn(&n("demo"), &configured, &[rotate(&k1, &rogue, 150)])
            .unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert_eq!(ring.active(&configured), vec![k2.public()]);
    }
}
