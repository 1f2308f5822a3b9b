//! Upload (operator) tokens, stored only as their BLAKE3 hash.

use sqlx::Row;

use super::{unique, Db};
use crate::error::{Error, Result};

impl Db {
    pub async fn create_token(&self, name: &str, token: &str) -> Result<()> {
        sqlx::query("INSERT INTO tokens (name, token_hash, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .bind(self.now())
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

    /// The name of the token, if it is known.
    pub async fn token_name(&self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM tokens WHERE token_hash = $1")
            .bind(blake3::hash(token.as_bytes()).as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }
}
