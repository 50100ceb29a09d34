//! Refresh tokens, in the identity service's
//! database (SQLite or PostgreSQL, portable SQL).
//!
//! A refresh token is 32 random bytes; only its SHA-256 is stored. Each
//! use rotates it: the presented token is marked used and a new one of the
//! same family is issued, in one transaction. Presenting a used token again
//! means it leaked: the whole family is revoked.

use cairn_service_db::ServiceDb;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// Creates the tables if missing.
pub async fn create_tables(db: &ServiceDb) -> Result<(), sqlx::Error> {
    for sql in [
        "CREATE TABLE IF NOT EXISTS identity_refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            family TEXT NOT NULL,
            username TEXT NOT NULL,
            client_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            state TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS identity_refresh_tokens_family
            ON identity_refresh_tokens (tenant_id, family)",
        "CREATE TABLE IF NOT EXISTS identity_login_failures (
            tenant_id TEXT NOT NULL,
            username TEXT NOT NULL,
            failures BIGINT NOT NULL,
            locked_until BIGINT,
            PRIMARY KEY (tenant_id, username))",
    ] {
        sqlx::query(sql).execute(db.pool()).await?;
    }
    Ok(())
}

/// The stored form of a refresh token.
pub(crate) fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A refresh token's record.
#[derive(Debug, Clone)]
pub(crate) struct RefreshRecord {
    pub tenant: String,
    pub family: String,
    pub username: String,
    pub client_id: String,
    pub scope: String,
    pub expires_at: i64,
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub(crate) enum Presented {
    /// It was active and is now used; issue its successor.
    Fresh(RefreshRecord),
    /// It had been used before: its family is now revoked.
    Reused,
    /// Unknown, revoked or expired.
    Invalid,
}

pub(crate) async fn insert(
    db: &ServiceDb,
    token: &str,
    record: &RefreshRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO identity_refresh_tokens
            (token_hash, tenant_id, family, username, client_id, scope, expires_at, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active')",
    )
    .bind(hash(token))
    .bind(&record.tenant)
    .bind(&record.family)
    .bind(&record.username)
    .bind(&record.client_id)
    .bind(&record.scope)
    .bind(record.expires_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Marks `token` used if it is active; see [`Presented`].
pub(crate) async fn present(
    db: &ServiceDb,
    token: &str,
    now: i64,
) -> Result<Presented, sqlx::Error> {
    let hashed = hash(token);
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "UPDATE identity_refresh_tokens SET state = 'used'
         WHERE token_hash = $1 AND state = 'active'
         RETURNING tenant_id, family, username, client_id, scope, expires_at",
    )
    .bind(&hashed)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        let record = RefreshRecord {
            tenant: row.try_get(0)?,
            family: row.try_get(1)?,
            username: row.try_get(2)?,
            client_id: row.try_get(3)?,
            scope: row.try_get(4)?,
            expires_at: row.try_get(5)?,
        };
        tx.commit().await?;
        if record.expires_at <= now {
            return Ok(Presented::Invalid);
        }
        return Ok(Presented::Fresh(record));
    }
    let found = sqlx::query(
        "SELECT tenant_id, family, state FROM identity_refresh_tokens WHERE token_hash = $1",
    )
    .bind(&hashed)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match found {
        Some(row) if row.try_get::<String, _>(2)? == "used" => {
            let tenant: String = row.try_get(0)?;
            let family: String = row.try_get(1)?;
            revoke_family_in(&mut tx, &tenant, &family).await?;
            Presented::Reused
        }
        _ => Presented::Invalid,
    };
    tx.commit().await?;
    Ok(outcome)
}

async fn revoke_family_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tenant: &str,
    family: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE identity_refresh_tokens SET state = 'revoked'
         WHERE tenant_id = $1 AND family = $2",
    )
    .bind(tenant)
    .bind(family)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes the family of `token` if it is a refresh token of `tenant`
/// issued to `client_id`. Whether it was one.
pub(crate) async fn revoke(
    db: &ServiceDb,
    tenant: &str,
    client_id: &str,
    token: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let found = sqlx::query(
        "SELECT family FROM identity_refresh_tokens
         WHERE token_hash = $1 AND tenant_id = $2 AND client_id = $3",
    )
    .bind(hash(token))
    .bind(tenant)
    .bind(client_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = found else {
        return Ok(false);
    };
    let family: String = row.try_get(0)?;
    revoke_family_in(&mut tx, tenant, &family).await?;
    tx.commit().await?;
    Ok(true)
}

/// The key a login attempt is counted under: the name as given, cut to a
/// bounded length (names that do not exist count too, so an attacker
/// cannot tell them apart by the lockout).
fn login_key(username: &str) -> String {
    username.chars().take(256).collect()
}

/// Until when (ms since the epoch) `username` is locked, if ever.
pub(crate) async fn locked_until(
    db: &ServiceDb,
    tenant: &str,
    username: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let until: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT locked_until FROM identity_login_failures WHERE tenant_id = $1 AND username = $2",
    )
    .bind(tenant)
    .bind(login_key(username))
    .fetch_optional(db.pool())
    .await?;
    Ok(until.flatten())
}

/// Counts one more failed login in a row; returns the count.
pub(crate) async fn count_failure(
    db: &ServiceDb,
    tenant: &str,
    username: &str,
) -> Result<u32, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "INSERT INTO identity_login_failures (tenant_id, username, failures, locked_until)
         VALUES ($1, $2, 1, NULL)
         ON CONFLICT (tenant_id, username)
         DO UPDATE SET failures = identity_login_failures.failures + 1
         RETURNING failures",
    )
    .bind(tenant)
    .bind(login_key(username))
    .fetch_one(db.pool())
    .await?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Locks `username` until `until` (ms since the epoch).
pub(crate) async fn lock(
    db: &ServiceDb,
    tenant: &str,
    username: &str,
    until: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE identity_login_failures SET locked_until = $3 WHERE tenant_id = $1 AND username = $2",
    )
    .bind(tenant)
    .bind(login_key(username))
    .bind(until)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Forgets the failed logins of `username` (it just logged in).
pub(crate) async fn clear_failures(
    db: &ServiceDb,
    tenant: &str,
    username: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM identity_login_failures WHERE tenant_id = $1 AND username = $2")
        .bind(tenant)
        .bind(login_key(username))
        .execute(db.pool())
        .await?;
    Ok(())
}
