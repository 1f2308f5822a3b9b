//! The online key that signs answers, each product's delegation to it, and release key
//! rotations (migration 0012, `docs/FORMAT.md` §10.6 and §10.7).

use sqlx::Row;

use super::{audit, Db};
use crate::error::{Error, Result};
use deltaroot_format::SecretKey;

impl Db {
    /// The deployment's online key, created on first use. Replicas that start together
    /// race to insert one; the loser reads the winner's.
    pub async fn answer_key(&self, now: i64) -> Result<SecretKey> {
        if let Some(k) = self.stored_answer_key().await? {
            return Ok(k);
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::BadConfig(format!("no randomness: {e}")))?;
        sqlx::query(
            "INSERT INTO answer_keys (id, secret_key, created_at) VALUES (1, $1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(SecretKey::from_seed(seed).to_text())
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.stored_answer_key()
            .await?
            .ok_or_else(|| Error::Corrupt("the answer key was inserted but is not there".into()))
    }

    async fn stored_answer_key(&self) -> Result<Option<SecretKey>> {
        let row = sqlx::query("SELECT secret_key FROM answer_keys WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let text: String = r.try_get(0)?;
            SecretKey::from_text(&text)
                .map_err(|e| Error::Corrupt(format!("the stored answer key: {e}")))
        })
        .transpose()
    }

    /// The product's delegation statement to the online key and its signature, if a
    /// publisher sent one.
    pub async fn delegation(&self, product_id: i64) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let row = sqlx::query("SELECT delegation, delegation_sig FROM products WHERE id = $1")
            .bind(product_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let statement: Option<Vec<u8>> = r.try_get(0)?;
        let sig: Option<Vec<u8>> = r.try_get(1)?;
        Ok(statement.zip(sig))
    }

    /// Stores a verified delegation for the product.
    pub async fn set_delegation(
        &self,
        product_id: i64,
        statement: &[u8],
        sig: &[u8],
    ) -> Result<()> {
        sqlx::query("UPDATE products SET delegation = $1, delegation_sig = $2 WHERE id = $3")
            .bind(statement)
            .bind(sig)
            .bind(product_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The product's rotation statements and signatures, oldest first, with the key each
    /// replaced.
    pub async fn rotations(&self, product_id: i64) -> Result<Vec<(Vec<u8>, Vec<u8>, String)>> {
        let rows = sqlx::query(
            "SELECT statement, signature, old_key FROM key_rotations WHERE product_id = $1 ORDER BY id",
        )
        .bind(product_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Replaces the product's release key `old` by `new` (texts as in `.pub` files), keeping
    /// the rotation statement and the new key's delegation, audited as `who`. Refused when
    /// the product's key is no longer `old` (another rotation came first).
    #[allow(clippy::too_many_arguments)]
    pub async fn rotate_key(
        &self,
        product: &str,
        product_id: i64,
        who: &str,
        old: &str,
        new: &str,
        rotation: (&[u8], &[u8]),
        delegation: (&[u8], &[u8]),
    ) -> Result<()> {
        let now = self.now();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE products SET public_key = $1, delegation = $2, delegation_sig = $3
             WHERE id = $4 AND public_key = $5",
        )
        .bind(new)
        .bind(delegation.0)
        .bind(delegation.1)
        .bind(product_id)
        .bind(old)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            return Err(Error::Conflict(format!(
                "the release key of product {product} changed meanwhile: fetch it and sign again"
            )));
        }
        sqlx::query(
            "INSERT INTO key_rotations (product_id, old_key, statement, signature, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(product_id)
        .bind(old)
        .bind(rotation.0)
        .bind(rotation.1)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            now,
            who,
            product,
            None,
            "rotate-key",
            serde_json::json!({ "old": old.trim(), "new": new.trim() }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Enrolls (or re-enrolls) a device's key, audited as `who`.
    pub async fn enroll(
        &self,
        product: &str,
        product_id: i64,
        device: &str,
        key: &str,
        who: &str,
    ) -> Result<()> {
        let now = self.now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO device_keys (product_id, device_id, public_key, enrolled_at, enrolled_by)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (product_id, device_id) DO UPDATE SET public_key = excluded.public_key,
                enrolled_at = excluded.enrolled_at, enrolled_by = excluded.enrolled_by",
        )
        .bind(product_id)
        .bind(device)
        .bind(key)
        .bind(now)
        .bind(who)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            now,
            who,
            product,
            None,
            "enroll",
            serde_json::json!({ "device": device, "key": key.trim() }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
