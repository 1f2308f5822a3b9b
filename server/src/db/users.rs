//! Dashboard users: a name, a role and an argon2id password hash.

use sqlx::Row;

use super::{unique, Db};
use crate::access::Role;
use crate::error::{Error, Result};

/// A user as `user list` shows it (never the hash).
#[derive(Clone, Debug, serde::Serialize)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Db {
    /// Adds a user whose password hashes to `password_hash` ([`crate::access::hash_password`]).
    pub async fn add_user(&self, name: &str, role: Role, password_hash: &str) -> Result<()> {
        let now = self.now();
        sqlx::query(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(name)
        .bind(role)
        .bind(password_hash)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if unique(&e) {
                Error::Conflict(format!("a user named {name:?} exists already"))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let rows =
            sqlx::query("SELECT name, role, created_at, updated_at FROM users ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(UserRow {
                    name: r.try_get(0)?,
                    role: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    updated_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// A user's role and password hash, for a login.
    pub async fn user_login(&self, name: &str) -> Result<Option<(Role, String)>> {
        let row = sqlx::query("SELECT role, password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Sets a user's password hash (and role, when given), ending the user's sessions.
    /// `false` when there is no such user.
    pub async fn update_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
        role: Option<Role>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = COALESCE($2, password_hash), role = COALESCE($3, role),
               updated_at = $4 WHERE name = $1",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role.map(Role::as_str))
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        self.end_sessions_of(name).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a change of users or tokens made from the dashboard in the audit log (under
    /// no product: `who` is `user:NAME`).
    pub async fn audit_accounts(
        &self,
        who: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        super::audit(&mut tx, self.now(), who, "", None, action, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a user and ends their sessions. `false` when there is no such user.
    pub async fn remove_user(&self, name: &str) -> Result<bool> {
        self.end_sessions_of(name).await?;
        let done = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
