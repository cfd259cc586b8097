//! Group commit of ingest and of recording sources' hooks on the embedded store.
//!
//! Every ingest must be on disk before its 202 (`synchronous=FULL`), and every hook before
//! its answer, and SQLite writes one transaction at a time: one commit per request made
//! concurrent requests queue for one flush to disk each. Here one task commits: it takes
//! every request waiting (up to [`MOST_PER_COMMIT`]) into one transaction, each in a
//! savepoint of its own, and answers each once the transaction that holds it is durable. A lone request is committed at once,
//! as before; a burst shares one flush. One ingest that fails is rolled back to its
//! savepoint and answered with its error; the others commit.

use herald_core::config::rtc::AppId;
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::hook::HookCall;
use herald_core::project::ProjectId;
use herald_core::source::RecordingSource;
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::queue::{ingest_live_in, ingest_rtc_in};
use crate::recording::apply_in;
use crate::{Accepted, StoreError};

/// Most requests one commit takes.
const MOST_PER_COMMIT: usize = 256;

/// One ingest request, waiting for its commit.
enum Ingest {
    Live {
        project: ProjectId,
        events: Vec<(EventId, LiveEvent)>,
        now: OffsetDateTime,
        reply: oneshot::Sender<Result<Vec<Accepted>, StoreError>>,
    },
    Rtc {
        project: ProjectId,
        app_id: AppId,
        events: Vec<(EventId, RtcEvent)>,
        now: OffsetDateTime,
        reply: oneshot::Sender<Result<Option<Vec<Accepted>>, StoreError>>,
    },
    Hooks {
        hooks: Vec<(RecordingSource, HookCall)>,
        now: OffsetDateTime,
        reply: oneshot::Sender<Result<Vec<usize>, StoreError>>,
    },
}

/// What a request came to inside the shared transaction, before the commit.
enum Outcome {
    Live(Result<Vec<Accepted>, StoreError>),
    Rtc(Result<Option<Vec<Accepted>>, StoreError>),
    Hooks(Result<Vec<usize>, StoreError>),
}

/// Where requests wait for the committing task; it ends when this is dropped.
pub(crate) struct IngestCommits(mpsc::Sender<Ingest>);

fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

impl IngestCommits {
    /// Starts the committing task on `pool`, writing in turn with the store's other
    /// writers behind `gate`.
    pub(super) fn start(pool: SqlitePool, gate: Arc<Mutex<()>>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MOST_PER_COMMIT);
        tokio::spawn(commit_ingests(pool, gate, rx));
        Self(tx)
    }

    pub(super) async fn live(
        &self,
        project: ProjectId,
        events: Vec<(EventId, LiveEvent)>,
        now: OffsetDateTime,
    ) -> Result<Vec<Accepted>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ingest = Ingest::Live {
            project,
            events,
            now,
            reply,
        };
        self.0.send(ingest).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub(super) async fn rtc(
        &self,
        project: ProjectId,
        app_id: AppId,
        events: Vec<(EventId, RtcEvent)>,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Accepted>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ingest = Ingest::Rtc {
            project,
            app_id,
            events,
            now,
            reply,
        };
        self.0.send(ingest).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Applies hooks to their streams' sessions (`RecordingSources::apply_hooks`).
    pub(crate) async fn hooks(
        &self,
        hooks: Vec<(RecordingSource, HookCall)>,
        now: OffsetDateTime,
    ) -> Result<Vec<usize>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ingest = Ingest::Hooks { hooks, now, reply };
        self.0.send(ingest).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn commit_ingests(pool: SqlitePool, gate: Arc<Mutex<()>>, mut rx: mpsc::Receiver<Ingest>) {
    let mut waiting = Vec::with_capacity(MOST_PER_COMMIT);
    while rx.recv_many(&mut waiting, MOST_PER_COMMIT).await > 0 {
        let outcomes = {
            let _turn = gate.lock().await;
            commit(&pool, &waiting).await
        };
        match outcomes {
            Ok(outcomes) => {
                for (ingest, outcome) in waiting.drain(..).zip(outcomes) {
                    // A client that has gone away gets no answer; its events are in.
                    match (ingest, outcome) {
                        (Ingest::Live { reply, .. }, Outcome::Live(r)) => drop(reply.send(r)),
                        (Ingest::Rtc { reply, .. }, Outcome::Rtc(r)) => drop(reply.send(r)),
                        (Ingest::Hooks { reply, .. }, Outcome::Hooks(r)) => drop(reply.send(r)),
                        // `commit` makes each outcome from its own ingest, so no other pair
                        // occurs; a dropped reply would answer "stopped".
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // Nothing was committed: every ingest of the batch is refused with the cause.
                let cause = e.to_string();
                let failed = || StoreError::Database(sqlx::Error::Protocol(cause.clone()));
                for ingest in waiting.drain(..) {
                    match ingest {
                        Ingest::Live { reply, .. } => drop(reply.send(Err(failed()))),
                        Ingest::Rtc { reply, .. } => drop(reply.send(Err(failed()))),
                        Ingest::Hooks { reply, .. } => drop(reply.send(Err(failed()))),
                    }
                }
            }
        }
    }
}

/// Runs every waiting ingest in one transaction, each in its own savepoint, and commits.
async fn commit(pool: &SqlitePool, waiting: &[Ingest]) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut outcomes = Vec::with_capacity(waiting.len());
    for ingest in waiting {
        sqlx::query("SAVEPOINT ingest").execute(&mut *tx).await?;
        let outcome = match ingest {
            Ingest::Live {
                project,
                events,
                now,
                ..
            } => Outcome::Live(ingest_live_in(&mut tx, project, events, *now).await),
            Ingest::Rtc {
                project,
                app_id,
                events,
                now,
                ..
            } => Outcome::Rtc(ingest_rtc_in(&mut tx, project, app_id, events, *now).await),
            Ingest::Hooks { hooks, now, .. } => {
                Outcome::Hooks(apply_hooks_in(&mut tx, hooks, *now).await)
            }
        };
        if matches!(
            &outcome,
            Outcome::Live(Err(_)) | Outcome::Rtc(Err(_)) | Outcome::Hooks(Err(_))
        ) {
            undo(&mut tx).await?;
        }
        sqlx::query("RELEASE ingest").execute(&mut *tx).await?;
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Applies hooks in order inside `tx`; SQLite's write transactions are serial, so the
/// session rows need no lock of their own.
async fn apply_hooks_in(
    tx: &mut Transaction<'_, Sqlite>,
    hooks: &[(RecordingSource, HookCall)],
    now: OffsetDateTime,
) -> Result<Vec<usize>, StoreError> {
    let mut queued = Vec::with_capacity(hooks.len());
    for (source, call) in hooks {
        queued.push(apply_in(tx, "", source, call, now).await?);
    }
    Ok(queued)
}

async fn undo(tx: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
    sqlx::query("ROLLBACK TO ingest").execute(&mut **tx).await?;
    Ok(())
}
