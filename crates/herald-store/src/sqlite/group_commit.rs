//! Group commit of ingest and of recording sources' hooks on the embedded store.
//!
//! Every ingest must be on disk before its 202 (`synchronous=FULL`), and every hook before
//! its answer, and SQLite writes one transaction at a time: one commit per request made
//! concurrent requests queue for one flush to disk each. Here one task commits: it takes
//! every request waiting (up to [`MOST_PER_COMMIT`]) into one transaction, each in a
//! savepoint of its own, and answers each once the transaction that holds it is durable. A lone request is committed at once,
//! as before; a burst shares one flush. One ingest that fails is rolled back to its
//! savepoint and answered with its error; the others commit.
//!
//! The committing task runs under the server's [`Supervisor`] as "ingest committer": if it
//! panics, the requests it held are answered with an error, and the next run takes the
//! requests waiting after them; if it cannot be kept running, `/readyz` names it.

use herald_core::hook::HookCall;
use herald_core::project::ProjectId;
use herald_core::source::RecordingSource;
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::BEGIN_DURABLE;
use super::due_window::{DueWindow, Pushes};
use super::ingest::{Batch, BatchAnswer, ingest_together};
use super::leases::Leases;
use crate::StoreError;
use crate::recording::apply_in;
use crate::supervision::Supervisor;

/// The committing task's name, for supervision and `/readyz`.
pub const TASK: &str = "ingest committer";

/// Most requests one commit takes.
const MOST_PER_COMMIT: usize = 256;

/// One request, waiting for its commit.
enum Ingest {
    Events {
        project: ProjectId,
        batch: Batch,
        now: OffsetDateTime,
        reply: oneshot::Sender<Result<BatchAnswer, StoreError>>,
    },
    Hooks {
        hooks: Vec<(RecordingSource, HookCall)>,
        now: OffsetDateTime,
        reply: oneshot::Sender<Result<Vec<usize>, StoreError>>,
    },
}

/// What a request came to inside the shared transaction, before the commit.
enum Outcome {
    Events(Result<BatchAnswer, StoreError>),
    Hooks(Result<Vec<usize>, StoreError>),
}

impl Outcome {
    fn failed(&self) -> bool {
        matches!(self, Self::Events(Err(_)) | Self::Hooks(Err(_)))
    }
}

/// Where requests wait for the committing task; it ends when this is dropped.
pub(crate) struct IngestCommits(mpsc::Sender<Ingest>);

fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

impl IngestCommits {
    /// Starts the committing task on `pool` under `tasks`, writing in turn with the
    /// store's other writers behind `gate`, and pushing what each commit inserted into the
    /// due window (leaving out what the leases hold).
    pub(super) fn start(
        pool: SqlitePool,
        gate: Arc<Mutex<()>>,
        window: (Arc<DueWindow>, Arc<Leases>),
        tasks: &Supervisor,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4 * MOST_PER_COMMIT);
        // Shared by the runs: what waits in the channel outlives a run that panicked.
        let rx = Arc::new(Mutex::new(rx));
        tasks.spawn(TASK, move || {
            commit_ingests(pool.clone(), gate.clone(), window.clone(), rx.clone())
        });
        Self(tx)
    }

    /// Accepts one request's events (`DeliveryQueue::ingest_live` and `ingest_rtc`).
    pub(super) async fn events(
        &self,
        project: ProjectId,
        batch: Batch,
        now: OffsetDateTime,
    ) -> Result<BatchAnswer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ingest = Ingest::Events {
            project,
            batch,
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

async fn commit_ingests(
    pool: SqlitePool,
    gate: Arc<Mutex<()>>,
    (window, leases): (Arc<DueWindow>, Arc<Leases>),
    rx: Arc<Mutex<mpsc::Receiver<Ingest>>>,
) {
    // A run before this one may have died between a commit and its push: what it
    // committed is then due outside the window.
    window.invalidate();
    let mut rx = rx.lock().await;
    let mut waiting = Vec::with_capacity(MOST_PER_COMMIT);
    while rx.recv_many(&mut waiting, MOST_PER_COMMIT).await > 0 {
        let outcomes = {
            let _turn = gate.lock().await;
            // Pushed before the gate opens: no outcome of a delivery can be written, and
            // its lease end, before the window has it or has left it out.
            commit(&pool, &waiting, &window)
                .await
                .map(|(outcomes, pushes)| {
                    window.push(pushes, |id| leases.is_leased(id));
                    outcomes
                })
        };
        match outcomes {
            Ok(outcomes) => {
                for (ingest, outcome) in waiting.drain(..).zip(outcomes) {
                    // A client that has gone away gets no answer; its events are in.
                    match (ingest, outcome) {
                        (Ingest::Events { reply, .. }, Outcome::Events(r)) => drop(reply.send(r)),
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
                        Ingest::Events { reply, .. } => drop(reply.send(Err(failed()))),
                        Ingest::Hooks { reply, .. } => drop(reply.send(Err(failed()))),
                    }
                }
            }
        }
    }
}

/// Runs every waiting request in one transaction and commits: the ingests planned together
/// ([`together`]), and if that fails, the transaction again with each request in a
/// savepoint of its own ([`one_by_one`]), so that the request at fault fails alone. The
/// shared plan runs outside any savepoint: under one, SQLite copies every page the
/// transaction first changes to a sub-journal, a cost the common case need not pay.
async fn commit(
    pool: &SqlitePool,
    waiting: &[Ingest],
    window: &Arc<DueWindow>,
) -> Result<(Vec<Outcome>, Pushes), StoreError> {
    let mut tx = pool.begin_with(BEGIN_DURABLE).await?;
    let mut pushes = Pushes::new(window.clone());
    let outcomes = match together(&mut tx, waiting, &mut pushes).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::debug!(error = %e, "a shared ingest plan failed; committing one by one");
            tx.rollback().await?;
            tx = pool.begin_with(BEGIN_DURABLE).await?;
            pushes = Pushes::new(window.clone());
            one_by_one(&mut tx, waiting, &mut pushes).await?
        }
    };
    tx.commit().await?;
    Ok((outcomes, pushes))
}

/// The ingests of each project as one set ([`ingest_together`]), in arrival order; then the
/// hooks, each in its own savepoint. Any error fails the whole (the caller rolls it back).
async fn together(
    tx: &mut Transaction<'_, Sqlite>,
    waiting: &[Ingest],
    pushes: &mut Pushes,
) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes: Vec<Option<Outcome>> = waiting.iter().map(|_| None).collect();
    let mut by_project: Vec<(&ProjectId, Vec<usize>)> = Vec::new();
    for (i, ingest) in waiting.iter().enumerate() {
        let Ingest::Events { project, .. } = ingest else {
            continue;
        };
        match by_project.iter_mut().find(|(p, _)| *p == project) {
            Some((_, requests)) => requests.push(i),
            None => by_project.push((project, vec![i])),
        }
    }
    for (project, requests) in by_project {
        let mut batches = Vec::with_capacity(requests.len());
        let mut latest = OffsetDateTime::UNIX_EPOCH;
        for &i in &requests {
            if let Ingest::Events { batch, now, .. } = &waiting[i] {
                batches.push(batch);
                latest = latest.max(*now);
            }
        }
        let answers = ingest_together(tx, project, &batches, latest, pushes).await?;
        for (i, answer) in requests.into_iter().zip(answers) {
            outcomes[i] = Some(Outcome::Events(Ok(answer)));
        }
    }
    for (i, ingest) in waiting.iter().enumerate() {
        if matches!(ingest, Ingest::Hooks { .. }) {
            outcomes[i] = Some(in_savepoint(tx, ingest, pushes).await?);
        }
    }
    // Every request got its outcome above; a gap would be answered "stopped".
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Events(Err(stopped()))))
        .collect())
}

/// Each request in a savepoint of its own: one that fails is rolled back and answered with
/// its error; the others commit.
async fn one_by_one(
    tx: &mut Transaction<'_, Sqlite>,
    waiting: &[Ingest],
    pushes: &mut Pushes,
) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(waiting.len());
    for ingest in waiting {
        outcomes.push(in_savepoint(tx, ingest, pushes).await?);
    }
    Ok(outcomes)
}

/// One request in a savepoint; an error of the request is its outcome, an error of the
/// savepoint itself fails the commit. What it inserted joins `pushes` only if it holds.
async fn in_savepoint(
    tx: &mut Transaction<'_, Sqlite>,
    ingest: &Ingest,
    pushes: &mut Pushes,
) -> Result<Outcome, StoreError> {
    sqlx::query("SAVEPOINT ingest").execute(&mut **tx).await?;
    let mut inserted = pushes.part();
    let outcome = match ingest {
        Ingest::Events {
            project,
            batch,
            now,
            ..
        } => Outcome::Events(
            ingest_together(tx, project, &[batch], *now, &mut inserted)
                .await
                .and_then(|mut answers| answers.pop().ok_or_else(stopped)),
        ),
        Ingest::Hooks { hooks, now, .. } => Outcome::Hooks(apply_hooks_in(tx, hooks, *now).await),
    };
    if outcome.failed() {
        sqlx::query("ROLLBACK TO ingest").execute(&mut **tx).await?;
    } else {
        pushes.extend(inserted);
    }
    sqlx::query("RELEASE ingest").execute(&mut **tx).await?;
    Ok(outcome)
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
