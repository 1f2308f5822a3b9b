//! Signed answers (`deltaroot_format::answer`): the online key that signs every answer to a
//! check, and the delegations to it that publishers send with their releases.
//!
//! The server never holds a release key. A release key's delegation names this
//! deployment's online key (`GET /v1/answer-key`); with it stored, every answer about the
//! product is signed and expires after `serve --answer-ttl`. Without one (a product last
//! published by an older publisher), answers go unsigned and devices refuse them, saying
//! why.

use std::time::Duration;

use base64::Engine;
use deltaroot_format::api::{AnswerKey, DelegationOffer, SignedAnswer};
use deltaroot_format::{Answer, Delegation, Name, PublicKey, SecretKey};

use crate::error::{Error, Result};

/// The online key and how long its answers are valid.
pub struct Signer {
    pub key: SecretKey,
    pub ttl: Duration,
}

impl Signer {
    /// What `GET /v1/answer-key` answers.
    pub fn public(&self) -> AnswerKey {
        AnswerKey {
            public_key: self.key.public().to_text(),
        }
    }

    /// Signs `answer`, issued at `now`, valid for the TTL; with the product's delegation
    /// when it names this key.
    pub fn sign(
        &self,
        mut answer: Answer,
        now: i64,
        delegation: Option<&DelegationOffer>,
    ) -> SignedAnswer {
        answer.issued = now.max(0) as u64;
        answer.expires = answer.issued.saturating_add(self.ttl.as_secs());
        answer.sign(&self.key, delegation.cloned())
    }

    /// Checks a delegation a publisher sent for `product`: signed by the release key the
    /// manifest was signed with, about this product and this server's key. Gives the bytes
    /// to store.
    pub fn check_delegation(
        &self,
        product: &Name,
        release_key: &PublicKey,
        offer: &DelegationOffer,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let d = Delegation::verify(offer, std::slice::from_ref(release_key))
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        if d.product != *product {
            return Err(Error::BadRequest(format!(
                "the delegation is for product {}, not {product}",
                d.product
            )));
        }
        if d.key != self.key.public() {
            return Err(Error::BadRequest(format!(
                "the delegation names key {}, and this server's answer key is {} (GET /v1/answer-key)",
                d.key.id(),
                self.key.public().id()
            )));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = b64
            .decode(&offer.statement)
            .map_err(|_| Error::BadRequest("delegation statement is not standard base64".into()))?;
        let sig = b64
            .decode(&offer.signature)
            .map_err(|_| Error::BadRequest("delegation signature is not standard base64".into()))?;
        Ok((bytes, sig))
    }

    /// A stored delegation as answers carry it, if it still names this key (a database
    /// restored beside a new key holds one that does not).
    pub fn usable(&self, stored: Option<(Vec<u8>, Vec<u8>)>) -> Option<DelegationOffer> {
        let (bytes, sig) = stored?;
        let d = Delegation::decode(&bytes).ok()?;
        if d.key != self.key.public() {
            return None;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(DelegationOffer {
            statement: b64.encode(bytes),
            signature: b64.encode(sig),
        })
    }
}
