//! ed25519 keys and signed manifests.
//!
//! A manifest's signature is 64 raw bytes over the manifest's exact encoding. The device
//! checks it before it parses a single field: [`VerifiedManifest`] is the only way to turn
//! bytes into a [`Manifest`].

use std::fmt;

use base64::Engine;
use ed25519_dalek::Signer;

use super::manifest::Manifest;
use crate::error::Error;

const PUB_PREFIX: &str = "deltaroot-ed25519-public ";
const KEY_PREFIX: &str = "deltaroot-ed25519-secret ";
/// Largest manifest accepted, to bound memory before the signature is checked.
pub const MAX_MANIFEST_BYTES: usize = 1 << 30;

/// A publisher's public key, trusted by devices.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// A publisher's signing key.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl PublicKey {
    /// Parses the one-line text of a `.pub` file.
    pub fn from_text(text: &str) -> Result<Self, Error> {
        // Never echo the text: a secret key passed by mistake must not reach a log.
        let bad = || Error::KeyText {
            what: if text.trim_start().starts_with(KEY_PREFIX) {
                "a secret key (pass the .pub file, never the .key)".into()
            } else {
                format!("a text of {} bytes", text.len())
            },
            kind: "public",
            prefix: PUB_PREFIX,
        };
        let b64 = text.trim().strip_prefix(PUB_PREFIX).ok_or_else(bad)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad())?;
        let arr: [u8; 32] = raw.try_into().map_err(|_| bad())?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|_| bad())
    }

    /// The key from its 32 raw bytes, if they are a valid point.
    pub fn from_bytes(raw: &[u8; 32]) -> Option<Self> {
        ed25519_dalek::VerifyingKey::from_bytes(raw)
            .ok()
            .map(PublicKey)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_text(&self) -> String {
        format!(
            "{PUB_PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.0.as_bytes())
        )
    }

    /// A short id for humans and logs: the first 8 bytes of BLAKE3 of the key, in hex.
    pub fn id(&self) -> String {
        hex::encode(&blake3::hash(self.0.as_bytes()).as_bytes()[..8])
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl SecretKey {
    /// A key from 32 random bytes.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn from_text(text: &str) -> Result<Self, Error> {
        let bad = || Error::KeyText {
            what: "secret key text".into(),
            kind: "secret",
            prefix: KEY_PREFIX,
        };
        let b64 = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad())?;
        let arr: [u8; 32] = raw.try_into().map_err(|_| bad())?;
        Ok(Self::from_seed(arr))
    }

    pub fn to_text(&self) -> String {
        format!(
            "{KEY_PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.0.to_bytes())
        )
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// A manifest whose signature has been checked against a trusted key.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    manifest: Manifest,
    bytes: Vec<u8>,
    signature: Vec<u8>,
    key_id: String,
}

impl VerifiedManifest {
    /// Checks `signature` over `bytes` against any of `trusted`, then parses.
    pub fn verify(
        bytes: Vec<u8>,
        signature: Vec<u8>,
        trusted: &[PublicKey],
    ) -> Result<Self, Error> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge(bytes.len()));
        }
        if signature.len() != 64 {
            return Err(Error::SignatureLength(signature.len()));
        }
        let key = trusted
            .iter()
            .find(|k| k.verify(&bytes, &signature))
            .ok_or_else(|| Error::BadSignature {
                keys: trusted
                    .iter()
                    .map(PublicKey::id)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let manifest = Manifest::decode(&bytes)?;
        Ok(VerifiedManifest {
            manifest,
            bytes,
            signature,
            key_id: key.id(),
        })
    }

    /// Signs and wraps a manifest the caller built itself.
    pub fn sign(manifest: Manifest, key: &SecretKey) -> Self {
        let bytes = manifest.encode();
        let signature = key.sign(&bytes).to_vec();
        VerifiedManifest {
            manifest,
            bytes,
            signature,
            key_id: key.public().id(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    #[test]
    fn verify_accepts_good_and_refuses_tampering() {
        let key = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let signed = VerifiedManifest::sign(sample(), &key);
        let trusted = [key.public()];
        let ok = VerifiedManifest::verify(
            signed.bytes().to_vec(),
            signed.signature().to_vec(),
            &trusted,
        )
        .unwrap();
        assert_eq!(ok.manifest(), &sample());

        let mut flipped = signed.bytes().to_vec();
        flipped[20] ^= 1;
        let err =
            VerifiedManifest::verify(flipped, signed.signature().to_vec(), &trusted).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");

        let by_other = VerifiedManifest::sign(sample(), &other);
        assert!(VerifiedManifest::verify(
            by_other.bytes().to_vec(),
            by_other.signature().to_vec(),
            &trusted
        )
        .is_err());
        assert!(VerifiedManifest::verify(signed.bytes().to_vec(), vec![0; 3], &trusted).is_err());
    }

    #[test]
    fn key_text_round_trips() {
        let key = SecretKey::from_seed([9; 32]);
        let back = SecretKey::from_text(&key.to_text()).unwrap();
        assert_eq!(back.public(), key.public());
        assert_eq!(
            PublicKey::from_text(&key.public().to_text()).unwrap(),
            key.public()
        );
        assert!(PublicKey::from_text("ssh-ed25519 AAAA").is_err());
    }
}
