//! Recording sources, sessions and steps (SPEC §7), on both backends.
//!
//! The SQL here is the same on SQLite and PostgreSQL, so it is written once, generic over
//! sqlx's database traits: a backend implements [`SqlBackend`] (its pool, its master key,
//! a write transaction) and gets [`RecordingSources`] from the
//! blanket implementation below. sqlx's generic interface has no `rows_affected`; a
//! statement whose count matters asks [`SqlBackend::rows_affected`], which each backend
//! answers from its own result type.

use async_trait::async_trait;
use herald_core::config::live::PublishDomain;
use herald_core::config::rtc::AppId;
use herald_core::hook::{HookCall, StreamKey};
use herald_core::project::ProjectId;
use herald_core::recording::{
    Session, Step, StepKind, hook_key, no_file_message, over_step, transition,
};
use herald_core::secrets::MasterKey;
use herald_core::source::{
    DownloadBase, Engine, RecordDir, RecordingSource, SourceSpec, SourceTarget,
};
use herald_core::storage::{ObjectPrefix, RecordFormat, StorageFields, StorageSpec};
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};
use time::OffsetDateTime;

use crate::backend::{SqlBackend, conflict_or, limit_offset};
use crate::rows::{CorruptRow, stored_project};
use crate::{Page, RecordingSources, StoreError};

/// Why a step is given back to be taken again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postponed {
    /// Its file cannot be read now (ffprobe cannot run).
    Reading,
    /// Its file's upload failed and is tried again: it counts in `uploads_waiting`.
    UploadFailed,
}

/// A recording source with what is going on at it, as the API lists it.
#[derive(Debug, Clone)]
pub struct SourceView {
    pub source: RecordingSource,
    /// Streams with an open session.
    pub open_sessions: u64,
    /// Finished files not yet read and reported.
    pub files_waiting: u64,
    /// Of those, files whose upload failed and is tried again (SPEC §7.1).
    pub uploads_waiting: u64,
    pub last_error: Option<SourceError>,
}

/// The last file a source could not report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub at: OffsetDateTime,
    pub file: String,
    pub message: String,
}

/// A step leased to this tracker, with its source.
#[derive(Debug, Clone)]
pub struct ClaimedStep {
    pub id: i64,
    pub source: RecordingSource,
    pub step: Step,
    /// How many times the step has been claimed, this claim included (postponements
    /// aside): a step that keeps ending its tracker (a crash, a kill) is failed after a few.
    pub attempts: i64,
}

/// Associated data binding a sealed hook secret to its source.
fn secret_context(id: &str) -> String {
    format!("record_source:{id}")
}

/// Associated data binding a sealed secret access key to its source's bucket.
fn storage_secret_context(id: &str) -> String {
    format!("record_source_storage:{id}")
}

/// A bucket's settings as stored in `storage_json`; the secret is sealed beside it.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredStorage {
    endpoint: String,
    region: String,
    bucket: String,
    access_key_id: String,
    path_style: bool,
    object_prefix: String,
    delete_local: bool,
}

impl StoredStorage {
    fn of(spec: &StorageSpec) -> Self {
        Self {
            endpoint: spec.endpoint.as_str().to_owned(),
            region: spec.region.clone(),
            bucket: spec.bucket.clone(),
            access_key_id: spec.access_key_id.clone(),
            path_style: spec.path_style,
            object_prefix: spec.object_prefix.as_str().to_owned(),
            delete_local: spec.delete_local,
        }
    }

    /// Read back through the core's rules (private endpoints allowed: the target check
    /// was made at creation, and is made again at each upload).
    fn into_spec(self, secret: &str, rtc: bool) -> Result<StorageSpec, String> {
        let fields = StorageFields {
            endpoint: Some(&self.endpoint),
            region: Some(&self.region),
            bucket: Some(&self.bucket),
            access_key_id: Some(&self.access_key_id),
            secret_access_key: Some(secret),
            path_style: self.path_style,
            object_prefix: Some(&self.object_prefix),
            delete_local: self.delete_local,
        };
        let spec =
            StorageSpec::from_fields(&fields, "storage.", rtc, true).map_err(|e| e.to_string())?;
        ObjectPrefix::parse("object_prefix", &self.object_prefix).map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

const SOURCE_COLUMNS: &str = "id, project_id, engine, publish_domain, app_id, record_dir, \
     download_base, max_pause_ms, secret_sealed, created_at_ms, last_error_at_ms, \
     last_error_file, last_error_message, record_format, storage_json, storage_secret_sealed";

#[derive(sqlx::FromRow)]
struct SourceRow {
    id: String,
    project_id: String,
    engine: String,
    publish_domain: Option<String>,
    app_id: Option<String>,
    record_dir: String,
    download_base: Option<String>,
    max_pause_ms: i64,
    secret_sealed: Vec<u8>,
    created_at_ms: i64,
    last_error_at_ms: Option<i64>,
    last_error_file: Option<String>,
    last_error_message: Option<String>,
    record_format: Option<String>,
    storage_json: Option<String>,
    storage_secret_sealed: Option<Vec<u8>>,
}

impl SourceRow {
    fn into_source(
        self,
        master: &MasterKey,
    ) -> Result<(RecordingSource, Option<SourceError>), StoreError> {
        let bad = |reason: String| CorruptRow {
            table: "record_sources",
            id: self.id.clone(),
            reason,
        };
        let target = match (&self.publish_domain, &self.app_id) {
            (Some(domain), None) => SourceTarget::Live {
                publish_domain: PublishDomain::parse("publish_domain", domain)
                    .map_err(|e| bad(e.to_string()))?,
            },
            (None, Some(app)) => SourceTarget::Rtc {
                app_id: AppId::parse(app).ok_or_else(|| bad("app_id is not an app id".into()))?,
            },
            _ => return Err(bad("not exactly one of publish_domain and app_id".into()).into()),
        };
        let rtc = matches!(target, SourceTarget::Rtc { .. });
        let record_format = self
            .record_format
            .as_deref()
            .map(|f| RecordFormat::parse("record_format", f, rtc))
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let storage = match (&self.storage_json, &self.storage_secret_sealed) {
            (Some(json), Some(sealed)) => {
                let stored: StoredStorage =
                    serde_json::from_str(json).map_err(|e| bad(format!("storage_json: {e}")))?;
                let secret = master.open_string(&storage_secret_context(&self.id), sealed)?;
                Some(
                    stored
                        .into_spec(secret.expose_secret(), rtc)
                        .map_err(|e| bad(format!("storage_json: {e}")))?,
                )
            }
            (None, None) => None,
            _ => return Err(bad("storage without its secret, or the reverse".into()).into()),
        };
        let spec = SourceSpec {
            record_format,
            storage,
            engine: Engine::parse("engine", &self.engine).map_err(|e| bad(e.to_string()))?,
            target,
            record_dir: RecordDir::parse("record_dir", &self.record_dir)
                .map_err(|e| bad(e.to_string()))?,
            download_base: self
                .download_base
                .as_deref()
                .map(|b| DownloadBase::parse("download_base", b))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            max_pause: std::time::Duration::from_millis(
                u64::try_from(self.max_pause_ms).map_err(|_| bad("negative max_pause".into()))?,
            ),
        };
        let last_error = match (
            self.last_error_at_ms,
            self.last_error_file,
            self.last_error_message,
        ) {
            (Some(at), Some(file), Some(message)) => Some(SourceError {
                at: from_unix_ms(at),
                file,
                message,
            }),
            _ => None,
        };
        Ok((
            RecordingSource {
                project_id: stored_project("record_sources", &self.id, &self.project_id)?,
                secret: master.open_string(&secret_context(&self.id), &self.secret_sealed)?,
                spec,
                created_at: from_unix_ms(self.created_at_ms),
                id: self.id,
            },
            last_error,
        ))
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    job_id: String,
    published: bool,
    over_at_ms: Option<i64>,
    files_started: i64,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        Self {
            job_id: row.job_id,
            published: row.published,
            over_at: row.over_at_ms.map(from_unix_ms),
            files_started: row.files_started,
        }
    }
}

const STEP_COLUMNS: &str =
    "id, source_id, app, stream, job_id, kind, file_no, path, at_ms, hook_key, attempts";

#[derive(sqlx::FromRow)]
struct StepRow {
    id: i64,
    source_id: String,
    app: String,
    stream: String,
    job_id: String,
    kind: String,
    file_no: i64,
    path: Option<String>,
    at_ms: i64,
    hook_key: Option<String>,
    attempts: i64,
}

impl StepRow {
    fn into_step(self) -> Result<Step, CorruptRow> {
        Ok(Step {
            kind: StepKind::parse(&self.kind).ok_or_else(|| CorruptRow {
                table: "record_steps",
                id: self.id.to_string(),
                reason: format!("unknown kind {:?}", self.kind),
            })?,
            stream: StreamKey {
                app: self.app,
                stream: self.stream,
            },
            job_id: self.job_id,
            file_no: self.file_no,
            path: self.path,
            at: from_unix_ms(self.at_ms),
            hook_key: self.hook_key,
        })
    }
}

#[async_trait]
impl<S> RecordingSources for S
where
    S: SqlBackend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> bool: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> String: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> Option<&'q str>: Encode<'q, S::Db>,
    for<'q> Option<i64>: Encode<'q, S::Db>,
    for<'q> Option<String>: Encode<'q, S::Db>,
    for<'q> Option<Vec<u8>>: Encode<'q, S::Db>,
    for<'q> Vec<u8>: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'r> &'r str: ColumnIndex<<S::Db as Database>::Row>,
    usize: ColumnIndex<<S::Db as Database>::Row>,
{
    async fn insert_source(&self, source: &RecordingSource) -> Result<(), StoreError> {
        let secret = source.secret.expose_secret();
        let sealed = self
            .master()
            .seal(&secret_context(&source.id), secret.as_bytes())?;
        let (domain, app) = match &source.spec.target {
            SourceTarget::Live { publish_domain } => (Some(publish_domain.as_str()), None),
            SourceTarget::Rtc { app_id } => (None, Some(app_id.as_str())),
        };
        let (storage_json, storage_sealed) = match &source.spec.storage {
            Some(storage) => (
                Some(
                    serde_json::to_string(&StoredStorage::of(storage)).map_err(|e| {
                        StoreError::Corrupt(CorruptRow {
                            table: "record_sources",
                            id: source.id.clone(),
                            reason: format!("storage_json: {e}"),
                        })
                    })?,
                ),
                Some(self.master().seal(
                    &storage_secret_context(&source.id),
                    storage.secret_access_key.expose_secret().as_bytes(),
                )?),
            ),
            None => (None, None),
        };
        let mut w = self.write_tx().await?;
        sqlx::query(&format!(
            "INSERT INTO record_sources ({SOURCE_COLUMNS}, secret_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, $11, $12, $13, $14)"
        ))
        .bind(source.id.as_str())
        .bind(source.project_id.as_str())
        .bind(source.spec.engine.as_str())
        .bind(domain)
        .bind(app)
        .bind(source.spec.record_dir.as_str())
        .bind(source.spec.download_base.as_ref().map(DownloadBase::as_str))
        .bind(i64::try_from(source.spec.max_pause.as_millis()).unwrap_or(i64::MAX))
        .bind(sealed)
        .bind(unix_ms(source.created_at))
        .bind(source.spec.record_format.map(RecordFormat::as_str))
        .bind(storage_json)
        .bind(storage_sealed)
        .bind(herald_core::secrets::token_digest(secret))
        .execute(&mut *w.tx)
        .await
        .map_err(conflict_or)?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn get_source(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<SourceView>, StoreError> {
        let row: Option<SourceRow> = sqlx::query_as(&format!(
            "SELECT {SOURCE_COLUMNS} FROM record_sources WHERE project_id = $1 AND id = $2"
        ))
        .bind(project.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => Ok(Some(view_of(self, row).await?)),
            None => Ok(None),
        }
    }

    async fn list_sources(
        &self,
        project: &ProjectId,
        page: Page,
    ) -> Result<(u64, Vec<SourceView>), StoreError> {
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM record_sources WHERE project_id = $1")
                .bind(project.as_str())
                .fetch_one(self.pool())
                .await?;
        let (limit, offset) = limit_offset(page);
        let rows: Vec<SourceRow> = sqlx::query_as(&format!(
            "SELECT {SOURCE_COLUMNS} FROM record_sources WHERE project_id = $1 \
             ORDER BY created_at_ms, id LIMIT $2 OFFSET $3"
        ))
        .bind(project.as_str())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            views.push(view_of(self, row).await?);
        }
        Ok((u64::try_from(total).unwrap_or(0), views))
    }

    async fn delete_source(
        &self,
        project: Option<&ProjectId>,
        id: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.write_tx().await?;
        let deleted = sqlx::query(
            "DELETE FROM record_sources WHERE ($1 IS NULL OR project_id = $1) AND id = $2",
        )
        .bind(project.map(ProjectId::as_str))
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(S::rows_affected(&deleted) > 0)
    }

    async fn find_source_by_secret(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<RecordingSource>, StoreError> {
        let row: Option<SourceRow> = sqlx::query_as(&format!(
            "SELECT {SOURCE_COLUMNS} FROM record_sources WHERE secret_sha256 = $1"
        ))
        .bind(secret_sha256)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| r.into_source(self.master()).map(|(source, _)| source))
            .transpose()
    }

    async fn count_sources(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM record_sources")
            .fetch_one(self.pool())
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_dirs_of_other_projects(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<RecordDir>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, record_dir FROM record_sources WHERE project_id <> $1 ORDER BY id",
        )
        .bind(project.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(id, dir)| {
                RecordDir::parse("record_dir", &dir).map_err(|e| {
                    StoreError::from(CorruptRow {
                        table: "record_sources",
                        id,
                        reason: e.to_string(),
                    })
                })
            })
            .collect()
    }

    async fn apply_hooks(
        &self,
        hooks: &[(RecordingSource, HookCall)],
        now: OffsetDateTime,
    ) -> Result<Vec<usize>, StoreError> {
        if let Some(applied) = self.apply_hooks_in_group_commit(hooks, now).await {
            return applied;
        }
        // Two nodes opening one stream's session at once: the second insert conflicts,
        // and the second try finds the session the first one opened.
        let mut tries = 0;
        loop {
            tries += 1;
            let mut w = self.write_tx().await?;
            let mut queued = Vec::with_capacity(hooks.len());
            let mut failed = None;
            for (source, call) in hooks {
                match apply_in(&mut w.tx, Self::LOCK_ROW, source, call, now).await {
                    Ok(n) => queued.push(n),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                Some(StoreError::Conflict) if tries < 2 => continue,
                Some(e) => return Err(e),
                None => {
                    w.tx.commit().await?;
                    return Ok(queued);
                }
            }
        }
    }

    async fn end_paused_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let mut w = self.queue_tx().await?;
        let ended: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "DELETE FROM record_sessions WHERE (source_id, app, stream) IN ( \
                 SELECT s.source_id, s.app, s.stream FROM record_sessions s \
                 WHERE s.over_at_ms <= $1 AND NOT s.published AND NOT EXISTS ( \
                     SELECT 1 FROM record_steps t WHERE t.source_id = s.source_id \
                     AND t.app = s.app AND t.stream = s.stream AND t.done_at_ms IS NULL) \
                 LIMIT 100) \
             AND over_at_ms <= $1 AND NOT published \
             RETURNING source_id, app, stream, job_id, files_started",
        )
        .bind(unix_ms(now))
        .fetch_all(&mut *w.tx)
        .await?;
        for (source_id, app, stream, job_id, files_started) in &ended {
            let mut step = over_step(
                StreamKey {
                    app: app.clone(),
                    stream: stream.clone(),
                },
                job_id.clone(),
                now,
            );
            // Files announced and none finished: the media server could not write them
            // (nginx logs "Permission denied", and sends no record_done). Said here, in the
            // session's end, rather than by a silent RECORD_OVER.
            if *files_started > 0 && !wrote_a_file(&mut w.tx, source_id, job_id).await? {
                step.file_no = *files_started;
                note_no_file_written(&mut w.tx, source_id, app, stream, *files_started, now)
                    .await?;
            }
            insert_step(&mut w.tx, source_id, &step).await?;
        }
        w.tx.commit().await?;
        Ok(ended.len() as u64)
    }

    async fn claim_steps(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
        files: u32,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        let mut w = self.queue_tx().await?;
        // The head of each stream's open steps, if it is due and not leased: each source's
        // first before any source's second (`turn`), so no source's many streams crowd out
        // another's, and at most `files` file steps (`nth_file`), so a tracker leases no
        // more files than it can start reading: the rest stay for other nodes. The lease
        // test is repeated outside the subquery so that PostgreSQL re-checks it on the row
        // it locks: of two nodes claiming at once, the second finds it leased. The owner
        // written here is what finishing, postponing and extending check.
        let rows: Vec<StepRow> = sqlx::query_as(&format!(
            "UPDATE record_steps SET lease_until_ms = $1, lease_owner = $4, \
             attempts = attempts + 1 WHERE id IN ( \
                 SELECT id FROM ( \
                     SELECT id, kind, turn, ROW_NUMBER() OVER ( \
                         PARTITION BY kind = 'file' ORDER BY turn, id) AS nth_of_kind \
                     FROM ( \
                         SELECT t.id, t.kind, ROW_NUMBER() OVER ( \
                             PARTITION BY t.source_id ORDER BY t.id) AS turn \
                         FROM record_steps t JOIN ( \
                             SELECT MIN(id) AS id FROM record_steps WHERE done_at_ms IS NULL \
                             GROUP BY source_id, app, stream) head ON head.id = t.id \
                         WHERE t.due_at_ms <= $2 \
                         AND (t.lease_until_ms IS NULL OR t.lease_until_ms <= $2)) due \
                     ) ranked \
                 WHERE kind <> 'file' OR nth_of_kind <= $5 \
                 ORDER BY turn, id LIMIT $3) \
             AND (lease_until_ms IS NULL OR lease_until_ms <= $2) AND done_at_ms IS NULL \
             RETURNING {STEP_COLUMNS}"
        ))
        .bind(unix_ms(lease_until))
        .bind(unix_ms(now))
        .bind(i64::from(limit))
        .bind(owner)
        .bind(i64::from(files))
        .fetch_all(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        // `RETURNING` gives no order on PostgreSQL: oldest first.
        let mut rows = rows;
        rows.sort_by_key(|row| row.id);
        let mut claimed = Vec::with_capacity(rows.len());
        let mut sources: Vec<RecordingSource> = Vec::new();
        for row in rows {
            let source = match sources.iter().find(|s| s.id == row.source_id) {
                Some(source) => source.clone(),
                None => {
                    let found: Option<SourceRow> = sqlx::query_as(&format!(
                        "SELECT {SOURCE_COLUMNS} FROM record_sources WHERE id = $1"
                    ))
                    .bind(row.source_id.as_str())
                    .fetch_optional(self.pool())
                    .await?;
                    // Deleted since: its steps went with it.
                    let Some(found) = found else { continue };
                    let (source, _) = found.into_source(self.master())?;
                    sources.push(source.clone());
                    source
                }
            };
            let (id, attempts) = (row.id, row.attempts);
            claimed.push(ClaimedStep {
                id,
                source,
                step: row.into_step()?,
                attempts,
            });
        }
        Ok(claimed)
    }

    async fn finish_steps(
        &self,
        owner: &str,
        ids: &[i64],
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut w = self.queue_tx().await?;
        let mut finished = 0;
        for &id in ids {
            // A step without a hook key can never be repeated: it need not be kept.
            let gone: Option<i64> = sqlx::query_scalar(
                "DELETE FROM record_steps WHERE id = $1 AND hook_key IS NULL \
                 AND lease_owner = $2 AND done_at_ms IS NULL RETURNING id",
            )
            .bind(id)
            .bind(owner)
            .fetch_optional(&mut *w.tx)
            .await?;
            let done: Option<i64> = sqlx::query_scalar(
                "UPDATE record_steps SET done_at_ms = $2, lease_until_ms = NULL, \
                 lease_owner = NULL WHERE id = $1 AND lease_owner = $3 AND done_at_ms IS NULL \
                 RETURNING id",
            )
            .bind(id)
            .bind(unix_ms(now))
            .bind(owner)
            .fetch_optional(&mut *w.tx)
            .await?;
            finished += u64::from(gone.is_some() || done.is_some());
        }
        w.tx.commit().await?;
        Ok(finished)
    }

    async fn postpone_step(
        &self,
        owner: &str,
        id: i64,
        due_at: OffsetDateTime,
        why: Postponed,
    ) -> Result<(), StoreError> {
        let mut w = self.queue_tx().await?;
        sqlx::query(
            "UPDATE record_steps SET due_at_ms = $2, lease_until_ms = NULL, lease_owner = NULL, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
             upload_tries = upload_tries + $4 \
             WHERE id = $1 AND lease_owner = $3 AND done_at_ms IS NULL RETURNING id",
        )
        .bind(id)
        .bind(unix_ms(due_at))
        .bind(owner)
        .bind(i64::from(why == Postponed::UploadFailed))
        .fetch_optional(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn extend_step_leases(
        &self,
        owner: &str,
        ids: &[i64],
        lease_until: OffsetDateTime,
    ) -> Result<Vec<i64>, StoreError> {
        let mut w = self.queue_tx().await?;
        let mut still = Vec::with_capacity(ids.len());
        for &id in ids {
            let kept: Option<i64> = sqlx::query_scalar(
                "UPDATE record_steps SET lease_until_ms = $2 \
                 WHERE id = $1 AND lease_owner = $3 AND done_at_ms IS NULL RETURNING id",
            )
            .bind(id)
            .bind(unix_ms(lease_until))
            .bind(owner)
            .fetch_optional(&mut *w.tx)
            .await?;
            still.extend(kept);
        }
        w.tx.commit().await?;
        Ok(still)
    }

    async fn note_source_error(
        &self,
        source_id: &str,
        error: &SourceError,
    ) -> Result<(), StoreError> {
        let mut w = self.queue_tx().await?;
        sqlx::query(
            "UPDATE record_sources SET last_error_at_ms = $2, last_error_file = $3, \
             last_error_message = $4 WHERE id = $1",
        )
        .bind(source_id)
        .bind(unix_ms(error.at))
        .bind(error.file.as_str())
        .bind(error.message.as_str())
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn next_recording_wake(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t) FROM ( \
                 SELECT CASE WHEN lease_until_ms > due_at_ms THEN lease_until_ms \
                             ELSE due_at_ms END AS t \
                 FROM record_steps WHERE done_at_ms IS NULL \
                 UNION ALL \
                 SELECT over_at_ms AS t FROM record_sessions WHERE NOT published \
             ) due WHERE t > $1",
        )
        .bind(unix_ms(now))
        .fetch_one(self.pool())
        .await?;
        Ok(next.map(from_unix_ms))
    }

    async fn release_step_leases(&self) -> Result<u64, StoreError> {
        let mut w = self.queue_tx().await?;
        let released = sqlx::query(
            "UPDATE record_steps SET lease_until_ms = NULL, lease_owner = NULL \
             WHERE lease_until_ms IS NOT NULL AND done_at_ms IS NULL",
        )
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(S::rows_affected(&released))
    }

    async fn forget_done_steps(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut w = self.queue_tx().await?;
        let gone = sqlx::query("DELETE FROM record_steps WHERE done_at_ms < $1")
            .bind(unix_ms(before))
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(S::rows_affected(&gone))
    }
}

/// A source row with its status counted.
async fn view_of<S>(store: &S, row: SourceRow) -> Result<SourceView, StoreError>
where
    S: SqlBackend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    usize: ColumnIndex<<S::Db as Database>::Row>,
{
    let (open_sessions, files_waiting, uploads_waiting): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM record_sessions WHERE source_id = $1), \
                (SELECT COUNT(*) FROM record_steps WHERE source_id = $1 \
                 AND kind = 'file' AND done_at_ms IS NULL), \
                (SELECT COUNT(*) FROM record_steps WHERE source_id = $1 \
                 AND kind = 'file' AND done_at_ms IS NULL AND upload_tries > 0)",
    )
    .bind(row.id.as_str())
    .fetch_one(store.pool())
    .await?;
    let (source, last_error) = row.into_source(store.master())?;
    Ok(SourceView {
        source,
        open_sessions: u64::try_from(open_sessions).unwrap_or(0),
        files_waiting: u64::try_from(files_waiting).unwrap_or(0),
        uploads_waiting: u64::try_from(uploads_waiting).unwrap_or(0),
        last_error,
    })
}

/// Applies one hook to its stream's session inside `tx`; returns how many steps it queued.
/// `lock_row` is [`SqlBackend::LOCK_ROW`].
pub(crate) async fn apply_in<D>(
    tx: &mut sqlx::Transaction<'_, D>,
    lock_row: &str,
    source: &RecordingSource,
    call: &HookCall,
    now: OffsetDateTime,
) -> Result<usize, StoreError>
where
    D: Database,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> bool: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> String: Decode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D>,
    for<'q> Option<i64>: Encode<'q, D>,
    for<'r> &'r str: ColumnIndex<D::Row>,
    usize: ColumnIndex<D::Row>,
{
    let stream = match call {
        HookCall::Ignored => return Ok(0),
        HookCall::Publish(stream) | HookCall::Unpublish(stream) => stream,
        HookCall::FileStarted { stream, .. } | HookCall::FileDone { stream, .. } => stream,
    };
    let current: Option<Session> = sqlx::query_as::<_, SessionRow>(&format!(
        "SELECT job_id, published, over_at_ms, files_started FROM record_sessions \
         WHERE source_id = $1 AND app = $2 AND stream = $3{lock_row}"
    ))
    .bind(source.id.as_str())
    .bind(stream.app.as_str())
    .bind(stream.stream.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .map(Session::from);
    let repeat = match hook_key(source, current.as_ref(), call) {
        Some(key) => sqlx::query_scalar::<_, i64>(
            "SELECT id FROM record_steps WHERE source_id = $1 AND hook_key = $2",
        )
        .bind(source.id.as_str())
        .bind(key.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .is_some(),
        None => false,
    };
    let plan = transition(source, current.as_ref(), call, now, repeat);
    if let Some(session) = &plan.session {
        let sql = if current.is_some() {
            "UPDATE record_sessions SET job_id = $4, published = $5, over_at_ms = $6, \
             files_started = $7 WHERE source_id = $1 AND app = $2 AND stream = $3"
        } else {
            "INSERT INTO record_sessions (source_id, app, stream, job_id, published, \
             over_at_ms, files_started) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        };
        sqlx::query(sql)
            .bind(source.id.as_str())
            .bind(stream.app.as_str())
            .bind(stream.stream.as_str())
            .bind(session.job_id.as_str())
            .bind(session.published)
            .bind(session.over_at.map(unix_ms))
            .bind(session.files_started)
            .execute(&mut **tx)
            .await
            .map_err(conflict_or)?;
    }
    for step in &plan.steps {
        insert_step(tx, &source.id, step).await?;
    }
    Ok(plan.steps.len())
}

/// Queues a step after the stream's others.
/// Whether a session's media server reported a finished file (any outcome: an empty or
/// unreadable file was still written).
async fn wrote_a_file<D>(
    tx: &mut sqlx::Transaction<'_, D>,
    source_id: &str,
    job_id: &str,
) -> Result<bool, StoreError>
where
    D: Database,
    for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
    for<'q> <D as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'r> i64: Decode<'r, D> + Type<D>,
    usize: sqlx::ColumnIndex<D::Row>,
{
    let files: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM record_steps WHERE source_id = $1 AND job_id = $2 AND kind = 'file'",
    )
    .bind(source_id)
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(files > 0)
}

/// The source's `last_error` for a session that ended without a file: its `file` is the
/// record dir nothing was written into.
async fn note_no_file_written<D>(
    tx: &mut sqlx::Transaction<'_, D>,
    source_id: &str,
    app: &str,
    stream: &str,
    files_started: i64,
    now: OffsetDateTime,
) -> Result<(), StoreError>
where
    D: Database,
    for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
    for<'q> <D as Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
{
    sqlx::query(
        "UPDATE record_sources SET last_error_at_ms = $2, last_error_file = record_dir, \
         last_error_message = $3 WHERE id = $1",
    )
    .bind(source_id)
    .bind(unix_ms(now))
    .bind(no_file_message(app, stream, files_started))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_step<D>(
    tx: &mut sqlx::Transaction<'_, D>,
    source_id: &str,
    step: &Step,
) -> Result<(), StoreError>
where
    D: Database,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D>,
{
    let at = unix_ms(step.at);
    sqlx::query(
        "INSERT INTO record_steps (source_id, app, stream, job_id, kind, file_no, path, at_ms, \
         hook_key, due_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8)",
    )
    .bind(source_id)
    .bind(step.stream.app.as_str())
    .bind(step.stream.stream.as_str())
    .bind(step.job_id.as_str())
    .bind(step.kind.as_str())
    .bind(step.file_no)
    .bind(step.path.as_deref())
    .bind(at)
    .bind(step.hook_key.as_deref())
    .execute(&mut **tx)
    .await
    .map_err(conflict_or)?;
    Ok(())
}
