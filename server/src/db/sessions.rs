//! Dashboard sessions: the BLAKE3 of the cookie, its user, its CSRF token and its expiry.
//! A user holds at most [`MAX_SESSIONS_PER_USER`]; expired sessions are swept hourly.

use sqlx::Row;

use super::Db;
use crate::access::Role;
use crate::error::Result;

/// Logins beyond this many live sessions of one user end the oldest.
pub const MAX_SESSIONS_PER_USER: i64 = 16;

/// A live session as a request sees it.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub user: String,
    pub role: Role,
    pub csrf: String,
}

fn id_hash(id: &str) -> Vec<u8> {
    blake3::hash(id.as_bytes()).as_bytes().to_vec()
}

impl Db {
    /// Starts a session `id` of `user` for `ttl_secs`, ending the user's oldest sessions
    /// past [`MAX_SESSIONS_PER_USER`].
    pub async fn create_session(
        &self,
        id: &str,
        user: &str,
        csrf: &str,
        ttl_secs: i64,
    ) -> Result<()> {
        let now = self.now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash(id))
        .bind(user)
        .bind(csrf)
        .bind(now)
        .bind(now.saturating_add(ttl_secs))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM sessions WHERE user_name = $1 AND id_hash NOT IN
               (SELECT id_hash FROM sessions WHERE user_name = $1
                ORDER BY created_at DESC, id_hash LIMIT $2)",
        )
        .bind(user)
        .bind(MAX_SESSIONS_PER_USER)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session `id`, with its user's role now (a removed user has none).
    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT s.user_name, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.user_name
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash(id))
        .bind(self.now())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                user: r.try_get(0)?,
                role: r.try_get(1)?,
                csrf: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Ends session `id` (a logout).
    pub async fn end_session(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash(id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends every session of `user` (a new password, a removed user).
    pub async fn end_sessions_of(&self, user: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE user_name = $1")
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes expired sessions; how many.
    pub async fn prune_sessions(&self) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(self.now())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
