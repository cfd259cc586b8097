//! Access keys and tokens of the management and ingest APIs, on both backends: the SQL is
//! the same on SQLite and PostgreSQL, so every [`SqlBackend`] gets [`Credentials`] from the
//! blanket implementation below.

use async_trait::async_trait;
use herald_core::project::ProjectId;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use time::OffsetDateTime;

use crate::backend::{SqlBackend, conflict_or};
use crate::rows::{access_key_context, stored_project};
use crate::{AccessKey, AccessKeySummary, Credentials, NewToken, StoreError, TokenSummary};

#[async_trait]
impl<B> Credentials for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db>,
    for<'q> Vec<u8>: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'r> &'r str: ColumnIndex<<B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        let sealed = self.master().seal(
            &access_key_context(&key.access_key),
            key.secret_key.expose_secret().as_bytes(),
        )?;
        sqlx::query(
            "INSERT INTO access_keys (access_key, project_id, secret_key_sealed, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(key.access_key.as_str())
        .bind(key.project_id.as_str())
        .bind(sealed)
        .bind(unix_ms(key.created_at))
        .execute(self.pool())
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn find_access_key(&self, access_key: &str) -> Result<Option<AccessKey>, StoreError> {
        let row = sqlx::query(
            "SELECT project_id, secret_key_sealed, created_at_ms FROM access_keys WHERE access_key = $1",
        )
        .bind(access_key)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Vec<u8> = row.try_get("secret_key_sealed")?;
        Ok(Some(AccessKey {
            access_key: access_key.to_owned(),
            project_id: stored_project("access_keys", access_key, row.try_get("project_id")?)?,
            secret_key: self
                .master()
                .open_string(&access_key_context(access_key), &sealed)?,
            created_at: from_unix_ms(row.try_get("created_at_ms")?),
        }))
    }

    async fn list_access_keys(
        &self,
        project: Option<&ProjectId>,
    ) -> Result<Vec<AccessKeySummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT access_key, project_id, created_at_ms FROM access_keys \
             WHERE $1 IS NULL OR project_id = $1 ORDER BY created_at_ms, access_key",
        )
        .bind(project.map(ProjectId::as_str))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let access_key: String = row.try_get("access_key")?;
                let project_id: &str = row.try_get("project_id")?;
                Ok(AccessKeySummary {
                    project_id: stored_project("access_keys", &access_key, project_id)?,
                    access_key,
                    created_at: from_unix_ms(row.try_get("created_at_ms")?),
                })
            })
            .collect()
    }

    async fn delete_access_key(&self, access_key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM access_keys WHERE access_key = $1")
            .bind(access_key)
            .execute(self.pool())
            .await?;
        Ok(B::rows_affected(&done) > 0)
    }

    async fn insert_token(&self, token: &NewToken<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (token_sha256, id, project_id, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.sha256)
        .bind(token.id())
        .bind(token.project_id.as_str())
        .bind(unix_ms(token.created_at))
        .bind(token.expires_at.map(unix_ms))
        .execute(self.pool())
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    /// Found tokens are remembered where the backend has a [`SqlBackend::token_cache`].
    async fn find_token_project(
        &self,
        token_sha256: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ProjectId>, StoreError> {
        let cache = self.token_cache();
        if let Some(project) = cache.and_then(|c| c.get(token_sha256, unix_ms(now))) {
            return Ok(Some(project));
        }
        let seen = cache.and_then(|c| c.stamp());
        let row: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT project_id, expires_at_ms FROM tokens WHERE token_sha256 = $1 \
             AND (expires_at_ms IS NULL OR expires_at_ms > $2)",
        )
        .bind(token_sha256)
        .bind(unix_ms(now))
        .fetch_optional(self.pool())
        .await?;
        let Some((project, expires_at_ms)) = row else {
            return Ok(None);
        };
        let project = stored_project("tokens", token_sha256, &project)?;
        if let Some(cache) = cache {
            cache.keep(seen, token_sha256, project.clone(), expires_at_ms);
        }
        Ok(Some(project))
    }

    async fn list_tokens(
        &self,
        project: Option<&ProjectId>,
    ) -> Result<Vec<TokenSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, project_id, created_at_ms, expires_at_ms FROM tokens \
             WHERE $1 IS NULL OR project_id = $1 ORDER BY created_at_ms, id",
        )
        .bind(project.map(ProjectId::as_str))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let project_id: &str = row.try_get("project_id")?;
                Ok(TokenSummary {
                    project_id: stored_project("tokens", &id, project_id)?,
                    id,
                    created_at: from_unix_ms(row.try_get("created_at_ms")?),
                    expires_at: row
                        .try_get::<Option<i64>, _>("expires_at_ms")?
                        .map(from_unix_ms),
                })
            })
            .collect()
    }

    async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if let Some(cache) = self.token_cache() {
            cache.changed().map_err(StoreError::TokenStamp)?;
        }
        Ok(B::rows_affected(&done) > 0)
    }
}
