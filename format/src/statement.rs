//! The one layout of the statements a release key signs about a key of its product: a
//! delegation to the server's answer key (`answer.rs`) and a rotation to a new release key
//! (`rotation.rs`): `magic(8) ‖ bytes(64) product ‖ key(32) ‖ u64le issued`, and their form
//! in API bodies (`{"statement", "signature"}`, standard base64).

use base64::Engine;

use crate::api::DelegationOffer;
use crate::error::Error;
use crate::name::Name;
use crate::sign::{PublicKey, SecretKey};
use crate::wire::{put_bytes, Reader, WireError};

/// Largest statement: magic, a name, a key, the time.
pub const MAX_KEY_STATEMENT_BYTES: usize = 8 + 65 + 32 + 8;

/// "`key` … for `product`, from `issued` on", as a delegation or a rotation says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatement {
    pub product: Name,
    pub key: PublicKey,
    /// Seconds since the Unix epoch.
    pub issued: u64,
}

pub(crate) fn refused(what: &str, reason: impl Into<String>) -> Error {
    Error::Refused {
        what: what.to_string(),
        reason: reason.into(),
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Standard base64 `text`, the `field` of a `what`.
pub(crate) fn decode_b64(what: &str, field: &str, text: &str) -> Result<Vec<u8>, Error> {
    b64()
        .decode(text)
        .map_err(|_| refused(what, format!("{field} is not standard base64")))
}

/// A name field of a statement: at most 64 bytes of UTF-8, and a valid [`Name`].
pub(crate) fn name(r: &mut Reader<'_>, what: &str, field: &'static str) -> Result<Name, Error> {
    let b = r
        .bytes(64, field)
        .map_err(|e| refused(what, format!("malformed: {e}")))?;
    let s = std::str::from_utf8(b).map_err(|_| refused(what, format!("{field} is not UTF-8")))?;
    Name::new(field, s)
}

impl KeyStatement {
    /// The exact bytes that are signed, after `magic`.
    pub fn encode(&self, magic: &[u8; 8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_KEY_STATEMENT_BYTES);
        out.extend_from_slice(magic);
        put_bytes(&mut out, self.product.as_bytes());
        out.extend_from_slice(&self.key.to_bytes());
        out.extend_from_slice(&self.issued.to_le_bytes());
        out
    }

    /// Parses a `what` that must start with `magic`; nothing may follow the time.
    pub fn decode(magic: &[u8; 8], what: &str, bytes: &[u8]) -> Result<KeyStatement, Error> {
        let bad = |e: WireError| refused(what, format!("malformed: {e}"));
        if bytes.len() > MAX_KEY_STATEMENT_BYTES {
            return Err(refused(what, format!("{} bytes", bytes.len())));
        }
        let mut r = Reader::new(bytes);
        if r.take(8, "magic").map_err(bad)? != magic {
            return Err(refused(
                what,
                format!("magic is not {}", String::from_utf8_lossy(magic)),
            ));
        }
        let product = name(&mut r, what, "product")?;
        let key = PublicKey::from_bytes(&r.array::<32>("key").map_err(bad)?)
            .ok_or_else(|| refused(what, "the key is not an Ed25519 point"))?;
        let issued = r.u64_le("issued").map_err(bad)?;
        if !r.is_empty() {
            return Err(bad(r.error("trailing bytes after the issue time")));
        }
        Ok(KeyStatement {
            product,
            key,
            issued,
        })
    }

    /// Signs it with `key`, in the form API bodies carry.
    pub fn sign(&self, magic: &[u8; 8], key: &SecretKey) -> DelegationOffer {
        let bytes = self.encode(magic);
        DelegationOffer {
            statement: b64().encode(&bytes),
            signature: b64().encode(key.sign(&bytes)),
        }
    }

    /// Decodes an API body's statement, finds which of `keys` signed it, then parses it.
    pub fn verify(
        magic: &[u8; 8],
        what: &str,
        offer: &DelegationOffer,
        keys: &[PublicKey],
    ) -> Result<(KeyStatement, PublicKey), Error> {
        let bytes = decode_b64(what, "statement", &offer.statement)?;
        let sig = decode_b64(what, "signature", &offer.signature)?;
        let signer = keys
            .iter()
            .find(|k| k.verify(&bytes, &sig))
            .ok_or_else(|| {
                refused(
                    what,
                    format!(
                        "its signature does not verify against the trusted key(s) {}",
                        keys.iter()
                            .map(PublicKey::id)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?
            .clone();
        Ok((KeyStatement::decode(magic, what, &bytes)?, signer))
    }
}
