//! The recording tracker (SPEC §7): takes the steps hooks queued, stream by stream and in
//! order, reads finished files, and ingests the recording events they make; ends sessions
//! whose pause reached `max_pause`.
//!
//! Everything it acts on is in the store (sessions, steps, pause deadlines), so a crash
//! loses nothing: after a restart the same steps are taken again, and since an event's id
//! is derived from its step, what was ingested before the crash is accepted once.

use std::sync::Arc;
use std::time::Duration;

use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::project::ProjectId;
use herald_core::recording::{DerivedEvent, FileOutcome, StepKind, events_of};
use herald_core::source::{RecordingSource, SourceTarget};
use herald_store::{ClaimedStep, SourceError, Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::probe::Prober;

/// How long a claimed step is this tracker's: reading a long recording can take minutes.
/// Another node takes the step over when it runs out (the embedded store gives every
/// lease back at start).
const LEASE: Duration = Duration::from_secs(15 * 60);
/// Streams whose next step one round takes.
const STREAMS_AT_ONCE: u32 = 64;
/// Files read at once: ffprobe must never take every core from the hooks, which media
/// servers wait for.
const FILES_AT_ONCE: usize = 2;
/// When ffprobe cannot run, or the store fails, a step is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest sleep when nothing is due: a fallback for a wake-up another node missed.
const MOST_IDLE: Duration = Duration::from_secs(30);
/// How long done file steps are kept to recognise a repeated hook.
const KEEP_DONE_STEPS: Duration = Duration::from_secs(24 * 3600);

pub struct Tracker {
    store: Arc<dyn Store>,
    prober: Prober,
    /// Signalled by hooks: there may be steps to take or a new pause deadline.
    hooks: Arc<Notify>,
    /// Signalled after ingest, for the delivery worker.
    deliveries: Arc<Notify>,
    /// Turns to read a file ([`FILES_AT_ONCE`]).
    files: Semaphore,
}

/// A step read: its events, ready to ingest.
struct ReadStep {
    id: i64,
    source: RecordingSource,
    events: Vec<DerivedEvent>,
}

impl Tracker {
    pub fn new(
        store: Arc<dyn Store>,
        prober: Prober,
        hooks: Arc<Notify>,
        deliveries: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            prober,
            hooks,
            deliveries,
            files: Semaphore::new(FILES_AT_ONCE),
        }
    }

    /// Runs until `cancel` fires. A step in progress then is left leased, and taken again
    /// after a restart.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_forget = OffsetDateTime::UNIX_EPOCH;
        while !cancel.is_cancelled() {
            let now = OffsetDateTime::now_utc();
            if now - last_forget > time::Duration::HOUR {
                last_forget = now;
                if let Err(e) = self.store.forget_done_steps(now - KEEP_DONE_STEPS).await {
                    tracing::warn!(error = %e, "recordings: forgetting old steps failed");
                }
            }
            let busy = tokio::select! {
                () = cancel.cancelled() => return,
                round = self.round(now) => round,
            };
            let sleep = match busy {
                Ok(true) => continue,
                Ok(false) => match self.store.next_recording_wake(now).await {
                    Ok(Some(at)) => (at - OffsetDateTime::now_utc())
                        .try_into()
                        .unwrap_or(Duration::ZERO)
                        .min(MOST_IDLE),
                    Ok(None) => MOST_IDLE,
                    Err(e) => {
                        tracing::warn!(error = %e, "recordings: reading the next deadline failed");
                        RETRY_AFTER
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "recordings: a round failed; trying again");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.hooks.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Ends the sessions whose pause is over, then takes the next step of each stream
    /// that has one due: reads their files, ingests all their events in one commit per
    /// project (and app), and marks them done in one more. True when it did anything
    /// (there may be more).
    async fn round(&self, now: OffsetDateTime) -> Result<bool, StoreError> {
        let ended = self.store.end_paused_sessions(now).await?;
        let claimed = self
            .store
            .claim_steps(now, now + LEASE, STREAMS_AT_ONCE)
            .await?;
        let took = claimed.len();
        let read = futures_util::future::join_all(claimed.into_iter().map(|c| self.read(c))).await;
        // One ingest per project and target: its events are of different streams (a round
        // takes one step per stream), so their order among each other does not matter.
        let mut groups: Vec<(ProjectId, SourceTarget, Vec<DerivedEvent>, Vec<i64>)> = Vec::new();
        for step in read.into_iter().flatten() {
            let (project, target) = (&step.source.project_id, &step.source.spec.target);
            match groups
                .iter_mut()
                .find(|(p, t, _, _)| p == project && t == target)
            {
                Some((_, _, events, ids)) => {
                    events.extend(step.events);
                    ids.push(step.id);
                }
                None => groups.push((project.clone(), target.clone(), step.events, vec![step.id])),
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut done = Vec::with_capacity(took);
        for (project, target, events, ids) in groups {
            match self.ingest(&project, &target, events, now).await {
                Ok(()) => done.extend(ids),
                Err(e) => {
                    tracing::warn!(project = %project, error = %e, "recordings: ingesting steps' events failed");
                    for id in ids {
                        self.postpone(id).await;
                    }
                }
            }
        }
        if let Err(e) = self.store.finish_steps(&done, now).await {
            // Their leases run out and they are taken again; their events are accepted once.
            tracing::warn!(error = %e, "recordings: marking steps done failed");
        }
        Ok(ended > 0 || took > 0)
    }

    /// Reads a step's file if it has one (at most [`FILES_AT_ONCE`] at a time) and makes
    /// its events. `None` when the step must wait (ffprobe cannot run): it is postponed.
    async fn read(&self, claimed: ClaimedStep) -> Option<ReadStep> {
        let ClaimedStep { id, source, step } = claimed;
        let outcome = match (step.kind, &step.path) {
            (StepKind::File, Some(path)) => {
                let read = async {
                    let _turn = self.files.acquire().await;
                    self.prober.read(&source.spec.record_dir, path).await
                };
                match read.await {
                    Ok(outcome) => Some(outcome),
                    Err(unavailable) => {
                        tracing::warn!(source = %source.id, file = %path, error = %unavailable,
                            "recordings: the file waits until ffprobe can be run");
                        self.postpone(id).await;
                        return None;
                    }
                }
            }
            _ => None,
        };
        if let (Some(FileOutcome::Failed(why)), Some(path)) = (&outcome, &step.path) {
            tracing::warn!(source = %source.id, file = %path, reason = %why, "recordings: a file cannot be reported");
            metrics::counter!("herald_recording_files_failed_total").increment(1);
            let error = SourceError {
                at: OffsetDateTime::now_utc(),
                file: path.clone(),
                message: why.clone(),
            };
            if let Err(e) = self.store.note_source_error(&source.id, &error).await {
                tracing::warn!(error = %e, "recordings: noting a source's error failed");
            }
        }
        let events = events_of(&source, &step, outcome.as_ref()).unwrap_or_else(|e| {
            // The hook's names broke an event rule; no retry can change that.
            tracing::error!(source = %source.id, error = %e, "recordings: the step makes no valid event");
            Vec::new()
        });
        Some(ReadStep { id, source, events })
    }

    /// Ingests one target's events in one commit.
    async fn ingest(
        &self,
        project: &ProjectId,
        target: &SourceTarget,
        events: Vec<DerivedEvent>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (mut live, mut rtc) = (Vec::new(), Vec::new());
        for event in events {
            match event {
                DerivedEvent::Live(id, event) => live.push((id, event)),
                DerivedEvent::Rtc(id, event) => rtc.push((id, event)),
            }
        }
        if !live.is_empty() {
            let accepted = self.store.ingest_live(project, &live, now).await?;
            metrics::counter!("herald_events_accepted_total", "flavour" => "live")
                .increment(live.len() as u64);
            note_unmatched_live(self.store.as_ref(), project, &live, &accepted).await;
        }
        if let (false, SourceTarget::Rtc { app_id }) = (rtc.is_empty(), target) {
            if self
                .store
                .ingest_rtc(project, app_id, &rtc, now)
                .await?
                .is_none()
            {
                tracing::warn!(
                    app_id = app_id.as_str(),
                    "recordings: the source's app is gone; its events are dropped"
                );
            }
            metrics::counter!("herald_events_accepted_total", "flavour" => "rtc")
                .increment(rtc.len() as u64);
        }
        self.deliveries.notify_one();
        Ok(())
    }

    async fn postpone(&self, id: i64) {
        let due = OffsetDateTime::now_utc() + RETRY_AFTER;
        if let Err(e) = self.store.postpone_step(id, due).await {
            tracing::warn!(error = %e, "recordings: postponing a step failed; its lease will run out");
        }
    }
}

/// A derived event that matches no config (configs subscribe to `RECORD_FILE_COMPLETE` by
/// default, so `RECORD_START` and the rest usually do not) is counted in
/// `herald_events_unmatched_total` and logged at debug with why, not dropped in silence.
async fn note_unmatched_live(
    store: &dyn Store,
    project: &ProjectId,
    events: &[(EventId, LiveEvent)],
    accepted: &[herald_store::Accepted],
) {
    match herald_store::unmatched::why_live_events_unmatched(store, project, events, accepted).await
    {
        Ok(notes) => {
            for ((id, event), note) in events.iter().zip(notes) {
                if let Some(why) = note {
                    let event_type = event.event_type.as_str();
                    metrics::counter!("herald_events_unmatched_total", "flavour" => "live", "event_type" => event_type)
                        .increment(1);
                    tracing::debug!(event_id = id.as_str(), "recordings: {why}");
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "recordings: reading why events matched no config failed")
        }
    }
}
