//! Signed answers (`deltaroot_format::answer`): the online key that signs every answer to a
//! check, and the delegations to it that publishers send with their releases.
//!
//! Release key rotation is here too (`rotate_key`): the product's key changes only by a
//! statement the current key signed, which devices receive with every answer.
//!
//! The server never holds a release key. A release key's delegation names this
//! deployment's online key (`GET /v1/answer-key`); with it stored, every answer about the
//! product is signed and expires after `serve --answer-ttl`. Without one (a product last
//! published by an older publisher), answers go unsigned and devices refuse them, saying
//! why.

use std::time::Duration;

use base64::Engine;
use deltaroot_format::api::{
    AnswerKey, DelegationOffer, RotateKeyRequest, RotateKeyResponse, SignedAnswer,
};
use deltaroot_format::{Answer, Delegation, Name, PublicKey, Rotation, SecretKey};

use crate::error::{Error, Result};
use crate::App;

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

fn decode(what: &str, offer: &DelegationOffer) -> Result<(Vec<u8>, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |field: &str| Error::BadRequest(format!("{what} {field} is not standard base64"));
    Ok((
        b64.decode(&offer.statement).map_err(|_| bad("statement"))?,
        b64.decode(&offer.signature).map_err(|_| bad("signature"))?,
    ))
}

/// `POST /v1/products/{product}/keys`: replaces the product's release key by the one a
/// rotation statement names, signed by the current key; the new key's delegation to the
/// answer key comes with it, so answers stay signed. Releases the old key signed stay.
pub async fn rotate_key(
    app: &App,
    product: &Name,
    who: &str,
    req: RotateKeyRequest,
) -> Result<RotateKeyResponse> {
    let (id, current) = app
        .db
        .product(product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    let old = PublicKey::from_text(&current)
        .map_err(|e| Error::Corrupt(format!("key of product {product}: {e}")))?;
    let (rotation, _) = Rotation::verify(&req.rotation, std::slice::from_ref(&old))
        .map_err(|e| Error::BadRequest(format!("{e} (the product's key is {})", old.id())))?;
    if rotation.product != *product {
        return Err(Error::BadRequest(format!(
            "the rotation is for product {}, not {product}",
            rotation.product
        )));
    }
    if rotation.key == old {
        return Err(Error::BadRequest(
            "the rotation names the product's current key".into(),
        ));
    }
    let delegation = app
        .answers
        .check_delegation(product, &rotation.key, &req.delegation)?;
    let statement = decode("rotation", &req.rotation)?;
    app.db
        .rotate_key(
            product,
            id,
            who,
            &current,
            &rotation.key.to_text(),
            (&statement.0, &statement.1),
            (&delegation.0, &delegation.1),
        )
        .await?;
    app.fleet.invalidate(product, Some(id));
    tracing::info!(%product, old = old.id(), new = rotation.key.id(), by = who, "release key rotated");
    Ok(RotateKeyResponse {
        product: product.clone(),
        old_key_id: old.id(),
        key_id: rotation.key.id(),
    })
}

/// Every key releases of the product were signed with: the current one, then each a
/// rotation replaced.
pub async fn product_keys(app: &App, product_id: i64, current: &str) -> Result<Vec<PublicKey>> {
    let mut keys = vec![current.to_string()];
    keys.extend(app.db.rotations(product_id).await?.into_iter().map(|r| r.2));
    keys.iter()
        .map(|k| PublicKey::from_text(k).map_err(|e| Error::Corrupt(format!("a stored key: {e}"))))
        .collect()
}
