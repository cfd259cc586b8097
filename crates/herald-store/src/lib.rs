//! Herald's storage boundary.
//!
//! [`Store`] is the one interface everything above storage uses; each backend is a module
//! that implements it and owns its migrations: [`sqlite`], the embedded store of one
//! node, and [`postgres`], shared by several. [`StoreLocation`] picks one from the
//! operator's settings (the URL scheme), and nothing above it knows which one runs.
//! Backends speak domain types, and seal and open secrets with the master key
//! themselves, so nothing above the store sees ciphertext and nothing below it sees a
//! plaintext secret go to disk.
//!
//! The modules, by what they hold:
//! - `backend`: what SQL both backends share needs of a backend (`SqlBackend`, which each
//!   implements), the helpers that SQL uses, and [`Store`] for a backend with every part.
//! - `credentials`, `live_configs`, `rtc_apps`, `queue_status`, `retention` and
//!   `recording`: the parts of [`Store`] whose SQL is the same on both backends, each
//!   written once, generic over sqlx's database traits, for every `SqlBackend`.
//! - [`sqlite`] and [`postgres`]: each backend's connections and migrations, its
//!   `SqlBackend`, and its [`DeliveryQueue`] (`delivery_queue`), whose SQL is its own.
//! - `accept`: the backend-neutral steps of accepting events and finishing attempts;
//!   `rows`: stored rows to domain types and back; `deliveries`: the delivery queue's types;
//!   `location`: which backend the operator's settings name; `state`: a delivery's states
//!   and the SQL lists of them; `token_cache`: the tokens a backend on one machine (the
//!   embedded store) remembers having found.
//! - [`supervision`]: background tasks restarted after a panic, and named once they cannot
//!   be kept running (the embedded store's ingest committer is one).

mod accept;
mod backend;
mod credentials;
mod deliveries;
mod history;
mod live_configs;
mod location;
mod outcomes;
pub mod postgres;
mod queue_status;
mod recording;
mod retention;
mod rows;
mod rtc_apps;
pub mod sqlite;
mod state;
pub mod supervision;
#[cfg(feature = "testing")]
pub mod testing;
mod token_cache;
pub mod unmatched;

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::config::callback_url::CallbackUrl;
use herald_core::config::live::LiveCallbackConfig;
use herald_core::config::rtc::{AppId, AppName, AuthKey, RtcSubscription};
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::hook::HookCall;
use herald_core::project::ProjectId;
use herald_core::secrets::SealError;
use herald_core::source::{RecordDir, RecordingSource};
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use history::{REPLAY_MOST, ReplayTarget, Replayed};
pub use location::StoreLocation;

/// The name and sealing context of the master-key check in `herald_meta`, on every backend.
pub(crate) const KEY_CHECK: &str = "master_key_check";
pub use deliveries::{
    Accepted, AfterAttempt, AttemptRecord, BULK_RETRY_MOST, BulkRetried, ClaimLimits,
    ClaimedDelivery, Completion, DeliveryFilter, DeliveryStatus, DeliveryView, EndpointAttempts,
    Lease, MOST_COUNTED_DELIVERIES, Notification, QueueStats, RetryFilter, RetryOutcome,
};
pub use recording::{ClaimedStep, Postponed, SourceError, SourceView};
pub use rows::CorruptRow;
pub use state::{DeliveryState, UnknownState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule would be broken (e.g. a second config for one domain and app).
    #[error("conflicts with an existing record")]
    Conflict,
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// `HERALD_DATABASE_URL` names no store this build can open.
    #[error("HERALD_DATABASE_URL: {0}")]
    BadLocation(String),
    /// The database's secrets were sealed under another master key than this node's.
    #[error(
        "this database's secrets are sealed under another master key: give every node the key \
         the database was created with (HERALD_MASTER_KEY, or the same master.key in its data dir)"
    )]
    MasterKeyMismatch,
    /// A change to the tokens committed, but the stamp that tells running servers about it
    /// could not be written (see `token_cache`).
    #[error(
        "the change is saved, but the running server could not be told ({0}): it keeps \
         trusting tokens it has seen for up to 10 s"
    )]
    TokenStamp(std::io::Error),
}

impl StoreError {
    /// Whether the store refused the data written, rather than failed to write: PostgreSQL's
    /// data exceptions and integrity violations (SQLSTATE classes 22 and 23), SQLite's
    /// constraint and too-big errors, and rows that do not read back. Writing the same data
    /// again fails again; anything else (a pool timeout, a busy database, a dropped
    /// connection, a full disk) may pass on a later try.
    pub fn is_about_the_data(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                let Some(code) = e.code() else {
                    return false;
                };
                if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // SQLite's (extended) result code, in decimal: the primary code is the
                    // low byte.
                    code.parse::<u32>()
                        .is_ok_and(|c| matches!(c & 0xff, SQLITE_TOOBIG | SQLITE_CONSTRAINT))
                } else {
                    // PostgreSQL's SQLSTATE: its first two characters are its class.
                    code.starts_with("22") || code.starts_with("23")
                }
            }
            Self::Database(
                sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. },
            )
            | Self::Conflict
            | Self::Corrupt(_)
            | Self::Sealing(_) => true,
            _ => false,
        }
    }
}

/// SQLite's primary result codes for "string or BLOB too big" and "constraint failed".
const SQLITE_TOOBIG: u32 = 18;
const SQLITE_CONSTRAINT: u32 = 19;

/// What [`DeliveryQueue::complete_deliveries`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// How many outcomes were applied: those whose lease still held.
    pub applied: u64,
    /// Whether finishing a stream's head made its next delivery due: only then (or when a
    /// retry was scheduled) has the worker a reason to look at the queue again.
    pub made_due: bool,
}

/// An access key with its secret key opened, for verifying a signature.
#[derive(Debug, Clone)]
pub struct AccessKey {
    pub access_key: String,
    pub project_id: ProjectId,
    pub secret_key: SecretString,
    pub created_at: OffsetDateTime,
}

/// An access key as listed to the operator: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeySummary {
    pub access_key: String,
    pub project_id: ProjectId,
    pub created_at: OffsetDateTime,
}

/// A token as the operator sees it listed: never the token, nor its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSummary {
    /// The handle `herald tokens revoke` takes: the first 16 hex characters of the token's
    /// SHA-256, which identify it without revealing anything that would let one use it.
    pub id: String,
    pub project_id: ProjectId,
    pub created_at: OffsetDateTime,
    /// `None`: valid until revoked.
    pub expires_at: Option<OffsetDateTime>,
}

/// A token to store: its digest (`herald_core::secrets::token_digest`), never the token.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub sha256: &'a str,
    pub project_id: &'a ProjectId,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

impl NewToken<'_> {
    /// The token's id (see [`TokenSummary::id`]).
    pub fn id(&self) -> &str {
        self.sha256.get(..16).unwrap_or(self.sha256)
    }
}

/// Filters of the Live config list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct LiveConfigFilter {
    pub publish_domain: Option<String>,
    pub app: Option<String>,
}

/// An RTC app (SPEC §2).
#[derive(Debug, Clone)]
pub struct RtcApp {
    pub app_id: AppId,
    pub project_id: ProjectId,
    pub app_name: AppName,
    pub created_at: OffsetDateTime,
    pub callback: Option<RecordCallback>,
    /// When the record callback was last set or removed (its `update_time`).
    pub callback_updated_at: OffsetDateTime,
}

/// An app's record callback.
#[derive(Debug, Clone)]
pub struct RecordCallback {
    pub url: CallbackUrl,
    pub auth_key: Option<AuthKey>,
    /// The event types it is sent; others are accepted and delivered nowhere.
    pub subscription: RtcSubscription,
}

/// A window of a list, already validated by the API (`limit` 1–100).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

/// Everything above the store holds an `Arc<dyn Store>`. The store's interface is split by
/// concern, and each part is implemented in the module that holds its SQL: once for both
/// backends where that SQL is the same, in each backend (the delivery queue) where not.
#[async_trait]
pub trait Store:
    Credentials
    + LiveConfigs
    + DeliveryQueue
    + QueueStatus
    + RecordingSources
    + Retention
    + RtcApps
    + Send
    + Sync
    + 'static
{
    /// Succeeds when the store answers a trivial query: `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Access keys and tokens of the management and ingest APIs.
#[async_trait]
pub trait Credentials {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError>;
    async fn find_access_key(&self, access_key: &str) -> Result<Option<AccessKey>, StoreError>;
    async fn list_access_keys(
        &self,
        project: Option<&ProjectId>,
    ) -> Result<Vec<AccessKeySummary>, StoreError>;
    /// True when the key existed.
    async fn delete_access_key(&self, access_key: &str) -> Result<bool, StoreError>;

    async fn insert_token(&self, token: &NewToken<'_>) -> Result<(), StoreError>;
    /// The project of the token with this digest, if it exists and has not expired at `now`.
    async fn find_token_project(
        &self,
        token_sha256: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ProjectId>, StoreError>;
    /// Tokens (expired ones included, until revoked), oldest first.
    async fn list_tokens(
        &self,
        project: Option<&ProjectId>,
    ) -> Result<Vec<TokenSummary>, StoreError>;
    /// True when the token existed. Requests with it are refused from then on.
    async fn delete_token(&self, id: &str) -> Result<bool, StoreError>;
}

/// Live-flavour callback configurations (SPEC §1).
#[async_trait]
pub trait LiveConfigs {
    /// [`StoreError::Conflict`] when the project already has a config for the domain and app.
    async fn insert_live_config(&self, config: &LiveCallbackConfig) -> Result<(), StoreError>;
    async fn get_live_config(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<LiveCallbackConfig>, StoreError>;
    /// The total that match the filter, and the page of them in creation order.
    async fn list_live_configs(
        &self,
        project: &ProjectId,
        filter: &LiveConfigFilter,
        page: Page,
    ) -> Result<(u64, Vec<LiveCallbackConfig>), StoreError>;
    /// Overwrites the config with the same project and id. False when there is none;
    /// [`StoreError::Conflict`] when the new domain and app are another config's.
    async fn update_live_config(&self, config: &LiveCallbackConfig) -> Result<bool, StoreError>;
    /// True when the config existed. Its deliveries not yet sent are cancelled.
    async fn delete_live_config(&self, project: &ProjectId, id: &str) -> Result<bool, StoreError>;
}

/// Accepted events and the durable delivery queue (SPEC §4–§6).
#[async_trait]
pub trait DeliveryQueue {
    /// Accepts events and creates their deliveries in one transaction: when this returns,
    /// all of it is durable, or none of it is. An `event_id` the project already used
    /// gets its first answer again and creates nothing.
    async fn ingest_live(
        &self,
        project: &ProjectId,
        events: &[(EventId, LiveEvent)],
        now: OffsetDateTime,
    ) -> Result<Vec<Accepted>, StoreError>;

    /// Leases due deliveries, oldest due first, within `limits`: no endpoint gets more than
    /// its room, and a full endpoint is skipped, so a slow endpoint's backlog cannot hold
    /// the others up for longer than one claim. (A claim scans a bounded window of due
    /// deliveries; when one endpoint's backlog fills it, that claim may come back short,
    /// and the next, with that endpoint full, goes past it.) Only the head of each
    /// (config, stream) queue is ever due, so per-stream order holds; the deliveries behind
    /// it come only as its followers ([`ClaimedDelivery::followers`]), to be sent after it.
    async fn claim_due_deliveries(
        &self,
        now: OffsetDateTime,
        limits: ClaimLimits<'_>,
        lease: &Lease,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Whether a follower ([`ClaimedDelivery::followers`]) may still be sent: its lease
    /// holds. A follower's lease ends when its config or app is deleted (its delivery is
    /// cancelled, as every delivery not yet sent). Answered from memory. Stores that
    /// lease no followers (PostgreSQL) keep every lease they give.
    fn follower_lease_holds(&self, _delivery: &ClaimedDelivery, _lease_owner: &str) -> bool {
        true
    }

    /// Records attempts and moves their deliveries on, each only if its lease still holds.
    async fn complete_deliveries(&self, completions: &[Completion])
    -> Result<Recorded, StoreError>;

    /// Returns deliveries whose lease expires before `expired_before` (their worker died)
    /// to the queue, due at `now`; one whose lost attempt was its `max_attempts`-th is dead
    /// instead. A single node that knows its predecessor is gone may pass a later
    /// `expired_before` than `now` to take every lease back at once.
    async fn rescue_expired_leases(
        &self,
        expired_before: OffsetDateTime,
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, StoreError>;

    /// The project's deliveries, newest first, with their attempts.
    async fn list_deliveries(
        &self,
        project: &ProjectId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<(u64, Vec<DeliveryView>), StoreError>;

    /// Re-queues a dead or failed delivery, due now, unless its config was deleted.
    async fn retry_delivery(
        &self,
        project: &ProjectId,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<RetryOutcome, StoreError>;

    /// The ids of the deliveries a bulk retry re-queues, oldest first, at most `limit`
    /// (see [`deliveries::bulk_retry_candidates`]).
    async fn bulk_retry_ids(
        &self,
        project: &ProjectId,
        filter: &RetryFilter,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError>;

    /// Re-queues up to [`BULK_RETRY_MOST`] of the deliveries `filter` matches, oldest
    /// first, each as [`DeliveryQueue::retry_delivery`] does (so each waits behind any
    /// open delivery of its stream, and a stream's re-queued deliveries go out in their
    /// order). Re-queued deliveries no longer match, so a repeat queues nothing twice and
    /// takes up the rest of a large set.
    async fn retry_matching(
        &self,
        project: &ProjectId,
        filter: &RetryFilter,
        now: OffsetDateTime,
    ) -> Result<BulkRetried, StoreError>
    where
        Self: Sync,
    {
        let ids = self
            .bulk_retry_ids(project, filter, now, BULK_RETRY_MOST + 1)
            .await?;
        let more = ids.len() > BULK_RETRY_MOST;
        let mut queued = 0;
        for id in ids.into_iter().take(BULK_RETRY_MOST) {
            if matches!(
                self.retry_delivery(project, id, now).await?,
                RetryOutcome::Requeued
            ) {
                queued += 1;
            }
        }
        Ok(BulkRetried { queued, more })
    }

    /// New deliveries to `target`, as it matches now, of every retained event of the
    /// project accepted in `[since, until)`: signed afresh when sent (with the target's
    /// key now), carrying the original event id, in acceptance order per stream (each
    /// behind any open delivery of its stream).
    async fn replay(
        &self,
        project: &ProjectId,
        target: &ReplayTarget,
        since: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Replayed, StoreError>;

    /// [`DeliveryQueue::ingest_live`] for an RTC app's events; `None` when there is no such app.
    async fn ingest_rtc(
        &self,
        project: &ProjectId,
        app_id: &AppId,
        events: &[(EventId, RtcEvent)],
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Accepted>>, StoreError>;

    /// Signals `wake` whenever another process commits deliveries that may be due, until
    /// `cancel` fires. Returns at once where no other process can (the embedded store,
    /// which one process owns and which signals in-process). An error means the signals
    /// stopped; the worker's poll still finds the work.
    async fn relay_work_signals(
        &self,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), StoreError>;
}

/// What the worker and `/metrics` read about the queue.
#[async_trait]
pub trait QueueStatus {
    /// When the earliest delivery not yet due at `now` comes due, for the worker to sleep
    /// until. (What is due already and was not claimed waits for an endpoint's room.)
    async fn next_due_after(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Queue depth by state, and the oldest due delivery.
    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError>;

    /// The project's endpoints: every one its configs and apps call back now (with no
    /// attempts, unless it has some), and every one with attempts since `since`, with
    /// their attempts since `since` and their last error since `errors_since`.
    async fn endpoint_attempts(
        &self,
        project: &ProjectId,
        since: OffsetDateTime,
        errors_since: OffsetDateTime,
    ) -> Result<Vec<EndpointAttempts>, StoreError>;
}

/// Retention (SPEC §6): history older than the operator keeps is deleted.
#[async_trait]
pub trait Retention {
    /// Deletes up to `limit` events accepted before `before` whose deliveries are all
    /// finished (succeeded, dead or cancelled), with their deliveries and attempts; an
    /// event with an open delivery is never deleted. Returns how many events it deleted.
    async fn delete_finished_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError>;
}

/// RTC apps and their record callback (SPEC §2).
#[async_trait]
pub trait RtcApps {
    async fn insert_rtc_app(&self, app: &RtcApp) -> Result<(), StoreError>;
    async fn get_rtc_app(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<Option<RtcApp>, StoreError>;
    /// The project's apps in creation order, and how many there are in all.
    async fn list_rtc_apps(
        &self,
        project: &ProjectId,
        page: Page,
    ) -> Result<(u64, Vec<RtcApp>), StoreError>;
    /// True when the app existed. Its deliveries not yet sent are cancelled.
    async fn delete_rtc_app(&self, project: &ProjectId, app_id: &AppId)
    -> Result<bool, StoreError>;
    /// Sets (or, with `None`, removes) an app's record callback; removing it cancels the
    /// deliveries not yet sent. `None` back when there is no such app.
    async fn set_record_callback(
        &self,
        project: &ProjectId,
        app_id: &AppId,
        callback: Option<&RecordCallback>,
        at: OffsetDateTime,
    ) -> Result<Option<RtcApp>, StoreError>;
}

/// Recording sources (SPEC §7): the media servers whose hooks Herald reads, their streams'
/// recording sessions, and the steps the tracker takes.
#[async_trait]
pub trait RecordingSources {
    async fn insert_source(&self, source: &RecordingSource) -> Result<(), StoreError>;
    async fn get_source(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<SourceView>, StoreError>;
    /// The project's sources in creation order, and how many there are in all.
    async fn list_sources(
        &self,
        project: &ProjectId,
        page: Page,
    ) -> Result<(u64, Vec<SourceView>), StoreError>;
    /// True when the source existed (in `project`, when given: the CLI deletes by id
    /// alone). Its open sessions and queued steps go with it; the events it caused stay.
    async fn delete_source(
        &self,
        project: Option<&ProjectId>,
        id: &str,
    ) -> Result<bool, StoreError>;
    /// The source whose hook secret has this digest (`secrets::token_digest`).
    async fn find_source_by_secret(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<RecordingSource>, StoreError>;
    /// How many sources there are in every project.
    async fn count_sources(&self) -> Result<u64, StoreError>;
    /// The record dirs of every source of another project than `project`: a new source's
    /// must overlap none of them.
    async fn record_dirs_of_other_projects(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<RecordDir>, StoreError>;

    // The sessions and steps of the sources' streams (`herald_core::recording`).

    /// Applies hooks, in order, to their streams' sessions in one transaction, durable when
    /// this returns (hooks that arrive together share one commit). Returns how many steps
    /// each queued (none for a repeated hook); on an error, none of them is applied.
    async fn apply_hooks(
        &self,
        hooks: &[(RecordingSource, HookCall)],
        now: OffsetDateTime,
    ) -> Result<Vec<usize>, StoreError>;
    /// Ends (up to 100) sessions whose pause reached `max_pause` and whose steps are all
    /// done, queueing each one's last step. Returns how many ended.
    async fn end_paused_sessions(&self, now: OffsetDateTime) -> Result<u64, StoreError>;
    /// Leases to `owner` (a tracker), until `lease_until`, the first open step of up to
    /// `limit` streams whose first step is due and not leased, of which at most `files`
    /// are finished files to read: one stream's steps are taken in order, one by one, and
    /// each source's first before any source's second. Each claim counts as one of the
    /// step's attempts.
    async fn claim_steps(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
        files: u32,
    ) -> Result<Vec<ClaimedStep>, StoreError>;
    /// Marks `owner`'s steps done, in one commit; each one's stream's next step becomes
    /// its head. A step whose lease another tracker has taken since is left to it; returns
    /// how many were marked.
    async fn finish_steps(
        &self,
        owner: &str,
        ids: &[i64],
        now: OffsetDateTime,
    ) -> Result<u64, StoreError>;
    /// Gives `owner`'s step back, to be taken again at `due_at` (ffprobe missing, say),
    /// without counting the attempt; `why` says whether its upload failed (it then
    /// counts in the source's `uploads_waiting`). Nothing when another tracker holds it
    /// now.
    async fn postpone_step(
        &self,
        owner: &str,
        id: i64,
        due_at: OffsetDateTime,
        why: Postponed,
    ) -> Result<(), StoreError>;
    /// Extends `owner`'s leases of steps still in progress to `lease_until`, so that
    /// leases can be short and a dead tracker's steps are taken over soon. Returns the
    /// ids still leased to `owner`.
    async fn extend_step_leases(
        &self,
        owner: &str,
        ids: &[i64],
        lease_until: OffsetDateTime,
    ) -> Result<Vec<i64>, StoreError>;
    /// Records the last file a source could not report, for its status.
    async fn note_source_error(
        &self,
        source_id: &str,
        error: &SourceError,
    ) -> Result<(), StoreError>;
    /// The next moment after `now` at which a step comes due, a lease runs out or a pause
    /// reaches `max_pause`: the tracker sleeps until then unless a hook wakes it.
    async fn next_recording_wake(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError>;
    /// Gives back every step lease: the embedded store's tracker, at start, knows the
    /// process that held them is gone.
    async fn release_step_leases(&self) -> Result<u64, StoreError>;
    /// Forgets done steps older than `before`: a hook repeated after that is taken anew.
    async fn forget_done_steps(&self, before: OffsetDateTime) -> Result<u64, StoreError>;
}
