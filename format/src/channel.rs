//! Signed channel statements. Rolling a channel back is a *downgrade*: an older release than
//! the one devices run. A device never moves to an older release on a server's word alone;
//! it needs a statement signed with the product's release key that names the product, the
//! channel and the exact version, issued after the release it runs was created
//! (`docs/FORMAT.md`, "Downgrade statements").

use std::path::PathBuf;

use base64::Engine;

use super::api::DowngradeOffer;
use super::manifest::check_name;
use super::sign::{PublicKey, SecretKey};
use super::wire::{put_bytes, Reader, WireError};
use crate::error::Error;

/// First bytes of every downgrade statement; the last byte is the format version.
pub const DOWNGRADE_MAGIC: &[u8; 8] = b"DRDOWNG1";
/// Largest statement accepted: magic, three names of 64 bytes with their lengths, the time.
pub const MAX_DOWNGRADE_BYTES: usize = 8 + 3 * 65 + 8;

/// "Devices of `product` following `channel` may move to `version`, even though it is older."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downgrade {
    pub product: String,
    pub channel: String,
    pub version: String,
    /// Seconds since the Unix epoch when the operator signed it.
    pub issued: u64,
}

fn what(product: &str, channel: &str) -> PathBuf {
    PathBuf::from(format!("downgrade statement for {product}/{channel}"))
}

fn malformed(e: WireError) -> Error {
    Error::Unsupported {
        path: PathBuf::from("downgrade statement"),
        what: format!("malformed: {e}"),
    }
}

impl Downgrade {
    /// The exact bytes that are signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(DOWNGRADE_MAGIC);
        put_bytes(&mut out, self.product.as_bytes());
        put_bytes(&mut out, self.channel.as_bytes());
        put_bytes(&mut out, self.version.as_bytes());
        out.extend_from_slice(&self.issued.to_le_bytes());
        out
    }

    /// Parses a statement; every name is checked like a manifest's, nothing may follow.
    pub fn decode(bytes: &[u8]) -> Result<Downgrade, Error> {
        let mut r = Reader::new(bytes);
        if r.take(8, "magic").map_err(malformed)? != DOWNGRADE_MAGIC {
            return Err(malformed(WireError {
                offset: 0,
                what: "magic is not DRDOWNG1".into(),
            }));
        }
        let mut name = |field: &'static str| -> Result<String, Error> {
            let b = r.bytes(64, field).map_err(malformed)?;
            let s = std::str::from_utf8(b)
                .map_err(|_| {
                    malformed(WireError {
                        offset: 0,
                        what: format!("{field} is not UTF-8"),
                    })
                })?
                .to_string();
            check_name(field, &s)?;
            Ok(s)
        };
        let product = name("product")?;
        let channel = name("channel")?;
        let version = name("version")?;
        let issued = r.u64_le("issued").map_err(malformed)?;
        if !r.is_empty() {
            return Err(malformed(r.error("trailing bytes after the issue time")));
        }
        Ok(Downgrade {
            product,
            channel,
            version,
            issued,
        })
    }

    /// Signs the statement with a release key.
    pub fn sign(&self, key: &SecretKey) -> SignedDowngrade {
        let bytes = self.encode();
        let signature = key.sign(&bytes).to_vec();
        SignedDowngrade {
            statement: self.clone(),
            bytes,
            signature,
            key_id: key.public().id(),
        }
    }
}

/// A downgrade statement whose signature has been checked against a trusted key.
#[derive(Clone, Debug)]
pub struct SignedDowngrade {
    statement: Downgrade,
    bytes: Vec<u8>,
    signature: Vec<u8>,
    key_id: String,
}

impl SignedDowngrade {
    /// Checks `signature` over `bytes` against any of `trusted`, then parses.
    pub fn verify(
        bytes: Vec<u8>,
        signature: Vec<u8>,
        trusted: &[PublicKey],
    ) -> Result<SignedDowngrade, Error> {
        if bytes.len() > MAX_DOWNGRADE_BYTES {
            return Err(Error::Unsupported {
                path: PathBuf::from("downgrade statement"),
                what: format!(
                    "{} bytes, over the limit of {MAX_DOWNGRADE_BYTES}",
                    bytes.len()
                ),
            });
        }
        if signature.len() != 64 {
            return Err(Error::SignatureLength(signature.len()));
        }
        let key = trusted
            .iter()
            .find(|k| k.verify(&bytes, &signature))
            .ok_or_else(|| Error::Unsupported {
                path: PathBuf::from("downgrade statement"),
                what: format!(
                    "signature does not verify against the trusted key(s) {}",
                    trusted
                        .iter()
                        .map(PublicKey::id)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let statement = Downgrade::decode(&bytes)?;
        Ok(SignedDowngrade {
            statement,
            bytes,
            signature,
            key_id: key.id(),
        })
    }

    /// Decodes the base64 fields of an update answer, then verifies.
    pub fn from_offer(offer: &DowngradeOffer, trusted: &[PublicKey]) -> Result<Self, Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bad = |field: &str| Error::Unsupported {
            path: PathBuf::from("downgrade statement"),
            what: format!("{field} is not standard base64"),
        };
        let bytes = b64.decode(&offer.statement).map_err(|_| bad("statement"))?;
        let sig = b64.decode(&offer.signature).map_err(|_| bad("signature"))?;
        SignedDowngrade::verify(bytes, sig, trusted)
    }

    /// The base64 form carried in API bodies.
    pub fn to_offer(&self) -> DowngradeOffer {
        let b64 = base64::engine::general_purpose::STANDARD;
        DowngradeOffer {
            statement: b64.encode(&self.bytes),
            signature: b64.encode(&self.signature),
        }
    }

    /// Checks that the statement allows `version` of `product` on `channel` for a device
    /// whose running release was created at `running_created`.
    pub fn allows(
        &self,
        product: &str,
        channel: &str,
        version: &str,
        running_created: u64,
    ) -> Result<(), Error> {
        let s = &self.statement;
        let refuse = |why: String| Error::Unsupported {
            path: what(product, channel),
            what: why,
        };
        if s.product != product || s.channel != channel {
            return Err(refuse(format!("it names {}/{}", s.product, s.channel)));
        }
        if s.version != version {
            return Err(refuse(format!("it allows {}, not {version}", s.version)));
        }
        if s.issued < running_created {
            return Err(refuse(format!(
                "it was issued at {}, before the running release was created ({running_created}): it cannot be meant for it",
                s.issued
            )));
        }
        Ok(())
    }

    pub fn statement(&self) -> &Downgrade {
        &self.statement
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

    fn sample() -> Downgrade {
        Downgrade {
            product: "demo".into(),
            channel: "stable".into(),
            version: "1.0".into(),
            issued: 1_700_000_000,
        }
    }

    #[test]
    fn encoding_is_the_documented_bytes() {
        let b = sample().encode();
        let mut want = b"DRDOWNG1".to_vec();
        want.extend_from_slice(b"\x04demo\x06stable\x031.0");
        want.extend_from_slice(&[0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(Downgrade::decode(&b).unwrap(), sample());
    }

    #[test]
    fn decode_refuses_bad_input() {
        let b = sample().encode();
        for bad in [
            &b[..b.len() - 1],
            &[b.as_slice(), b"x"].concat()[..],
            b"DRDOWNG2\x04demo",
            &b[..4],
        ] {
            assert!(Downgrade::decode(bad).is_err(), "{bad:?}");
        }
        let mut dots = sample();
        dots.version = "../x".into();
        assert!(Downgrade::decode(&dots.encode()).is_err());
    }

    #[test]
    fn verify_and_allows() {
        let key = SecretKey::from_seed([5; 32]);
        let other = SecretKey::from_seed([6; 32]);
        let signed = sample().sign(&key);
        let offer = signed.to_offer();
        let ok = SignedDowngrade::from_offer(&offer, &[key.public()]).unwrap();
        assert_eq!(ok.statement(), &sample());
        ok.allows("demo", "stable", "1.0", 1_600_000_000).unwrap();
        assert!(ok.allows("demo", "beta", "1.0", 0).is_err());
        assert!(ok.allows("other", "stable", "1.0", 0).is_err());
        assert!(ok.allows("demo", "stable", "0.9", 0).is_err());
        assert!(ok.allows("demo", "stable", "1.0", 1_800_000_000).is_err());
        let err = SignedDowngrade::from_offer(&offer, &[other.public()]).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        let mut flipped = signed.bytes().to_vec();
        flipped[12] ^= 1;
        assert!(
            SignedDowngrade::verify(flipped, signed.signature().to_vec(), &[key.public()]).is_err()
        );
    }
}
