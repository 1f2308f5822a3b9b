//! The online key that signs answers, and each product's delegation to it (migration 0012,
//! `docs/FORMAT.md`, "Signed answers").

use sqlx::Row;

use super::Db;
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
}
