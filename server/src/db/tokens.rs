//! Upload tokens, stored only as their BLAKE3 hash, with their scopes and products.

use sqlx::Row;

use super::{unique, Db};
use crate::access::Rights;
use crate::error::{Error, Result};

/// A token as `token list` shows it (never the token itself: only its hash is kept).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenRow {
    pub name: String,
    /// `all`, or the scopes joined by commas.
    pub scopes: String,
    /// The products it may act on, joined by commas; `None`: every product.
    pub products: Option<String>,
    pub created_at: i64,
}

impl Db {
    /// Stores a new token's hash with its scopes and products (as
    /// [`Rights::scopes_text`] and [`Rights::products_text`] write them).
    pub async fn create_token(
        &self,
        name: &str,
        token: &str,
        scopes: &str,
        products: Option<&str>,
    ) -> Result<()> {
        // The stored text must read back.
        Rights::of_token(name, scopes, products)?;
        sqlx::query(
            "INSERT INTO tokens (name, token_hash, created_at, scopes, products) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
        .bind(self.now())
        .bind(scopes)
        .bind(products)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if unique(&e) {
                Error::Conflict(format!("a token named {name:?} exists already"))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// The rights of the token, if it is known.
    pub async fn token_rights(&self, token: &str) -> Result<Option<Rights>> {
        let row = sqlx::query("SELECT name, scopes, products FROM tokens WHERE token_hash = $1")
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let name: String = r.try_get(0)?;
        let scopes: String = r.try_get(1)?;
        let products: Option<String> = r.try_get(2)?;
        Rights::of_token(&name, &scopes, products.as_deref()).map(Some)
    }

    /// Every token, by name.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows =
            sqlx::query("SELECT name, scopes, products, created_at FROM tokens ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    name: r.try_get(0)?,
                    scopes: r.try_get(1)?,
                    products: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Removes a token: its holder is refused from the next request on. `false` when no
    /// token has that name.
    pub async fn revoke_token(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
