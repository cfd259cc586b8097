//! The recording tracker (SPEC §7): takes the steps hooks queued, stream by stream and in
//! order, reads finished files, and ingests the recording events they make; ends sessions
//! whose pause reached `max_pause`.
//!
//! Everything it acts on is in the store (sessions, steps, pause deadlines), so a crash
//! loses nothing: after a restart the same steps are taken again, and since an event's id
//! is derived from its step, what was ingested before the crash is accepted once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::project::ProjectId;
use herald_core::recording::{DerivedEvent, FileOutcome, StepKind, events_of};
use herald_core::source::{RecordDir, RecordRoots, RecordingSource, SourceTarget};
use herald_store::{ClaimedStep, Postponed, SourceError, Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::file_turns::FileTurns;
use crate::probe::{ProbeUnavailable, Prober};
use crate::upload::{UploadError, Uploader};

/// How long a claimed step is this tracker's unless renewed. Short, so that when a node
/// dies another takes its steps over within a minute (the embedded store gives every
/// lease back at start); a tracker renews the leases of its steps in progress every
/// [`RENEW_EVERY`], so a long recording keeps its lease while it is read.
const LEASE: Duration = Duration::from_secs(45);
const RENEW_EVERY: Duration = Duration::from_secs(15);
/// Claims of one step after which it is failed instead of read again: each claim that
/// did not finish ended with its tracker (a crash, a kill, an OOM during ffprobe).
const MOST_ATTEMPTS: i64 = 5;
/// Steps in progress at once (each of a different stream).
const STREAMS_AT_ONCE: u32 = 64;
/// Files read at once: ffprobe must never take every core from the hooks, which media
/// servers wait for. Shared fairly: see [`FileTurns`].
const FILES_AT_ONCE: usize = 2;
/// Finished files a tracker holds at once: those being read and one more for each turn,
/// ready when a turn comes free. A tracker leases no more, so that another node with
/// free turns takes the rest.
const FILES_HELD: u32 = 2 * FILES_AT_ONCE as u32;
/// When ffprobe cannot run, or the store fails, a step is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest sleep when nothing is due: a fallback for a wake-up another node missed.
const MOST_IDLE: Duration = Duration::from_secs(30);
/// How long done file steps are kept to recognise a repeated hook.
const KEEP_DONE_STEPS: Duration = Duration::from_secs(24 * 3600);
/// How long an upload is retried before its file is `RECORD_FAILED` (SPEC §7.1's
/// `HERALD_UPLOAD_DEADLINE` default).
pub const DEFAULT_UPLOAD_DEADLINE: Duration = Duration::from_secs(3600);
/// The bounds of an upload's back-off: a quarter of the time it has already waited,
/// within these, and never past its deadline.
const UPLOAD_BACKOFF: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(300));
/// What a project is told about a file whose reading failed inside Herald (a panic).
const READING_FAILED: &str =
    "Herald failed while reading this file (see Herald's log); it is not tried again";

/// Reads a finished file: [`Prober`] in Herald; a stand-in in tests.
pub trait FileReader: Send + Sync + 'static {
    /// What the file a hook named as `path` is, if it is below `record_dir`; an error when
    /// it cannot be read now (the step waits).
    fn read<'a>(
        &'a self,
        record_dir: &'a RecordDir,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<FileOutcome, ProbeUnavailable>> + Send + 'a>>;
}

impl FileReader for Prober {
    fn read<'a>(
        &'a self,
        record_dir: &'a RecordDir,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<FileOutcome, ProbeUnavailable>> + Send + 'a>> {
        Box::pin(Prober::read(self, record_dir, path))
    }
}

pub struct Tracker {
    store: Arc<dyn Store>,
    /// This tracker's name on the steps it leases: only the owner may finish, postpone or
    /// renew a step, so a node whose lease ran out cannot undo its successor's work.
    owner: String,
    reader: Arc<dyn FileReader>,
    /// Signalled by hooks: there may be steps to take or a new pause deadline.
    hooks: Arc<Notify>,
    /// Signalled after ingest, for the delivery worker.
    deliveries: Arc<Notify>,
    /// Turns to read a file ([`FILES_AT_ONCE`]), fair across projects and sources.
    files: FileTurns,
    /// Converts and uploads the files of sources with storage (SPEC §7.1).
    uploader: Uploader,
    /// How long a failing upload is tried again, counted from the file's hook.
    upload_deadline: Duration,
}

impl Tracker {
    pub fn new(
        store: Arc<dyn Store>,
        reader: impl FileReader,
        hooks: Arc<Notify>,
        deliveries: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            owner: uuid::Uuid::new_v4().simple().to_string(),
            reader: Arc::new(reader),
            hooks,
            deliveries,
            files: FileTurns::new(FILES_AT_ONCE),
            uploader: Uploader::new(
                Prober::new("ffprobe", RecordRoots::default()),
                "ffmpeg",
                std::env::temp_dir().join("herald-uploads"),
                false,
            ),
            upload_deadline: DEFAULT_UPLOAD_DEADLINE,
        }
    }

    /// Uploads with `uploader`, retrying a failing upload for `deadline`.
    pub fn with_uploads(mut self, uploader: Uploader, deadline: Duration) -> Self {
        self.uploader = uploader;
        self.upload_deadline = deadline;
        self
    }

    /// Stores a complete file in its source's bucket; the outcome is then what was stored,
    /// or the failure naming the bucket. `None`: the upload is to be tried again later
    /// (the step was postponed).
    async fn store_file(
        &self,
        id: i64,
        source: &RecordingSource,
        step: &herald_core::recording::Step,
        outcome: FileOutcome,
    ) -> Option<FileOutcome> {
        let (FileOutcome::Complete(mut facts), Some(storage)) =
            (outcome.clone(), &source.spec.storage)
        else {
            return Some(outcome);
        };
        let start = facts.start_at(step.at).unwrap_or(step.at);
        let stream = (step.stream.app.as_str(), step.stream.stream.as_str());
        match self
            .uploader
            .upload(source, storage, stream, &facts, start)
            .await
        {
            Ok(stored) => {
                metrics::counter!("herald_uploads_total", "outcome" => "stored").increment(1);
                facts.size = stored.size;
                facts.record_format = stored.record_format;
                facts.stored = Some(stored.object);
                Some(FileOutcome::Complete(facts))
            }
            Err(error @ UploadError::Unavailable { .. }) => {
                let waited: Duration = (OffsetDateTime::now_utc() - step.at)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                if waited >= self.upload_deadline {
                    metrics::counter!("herald_uploads_total", "outcome" => "failed").increment(1);
                    return Some(FileOutcome::Failed(format!(
                        "upload failed after {} s of retries: {error}; the local file is kept",
                        waited.as_secs()
                    )));
                }
                metrics::counter!("herald_uploads_total", "outcome" => "retried").increment(1);
                let (least, most) = UPLOAD_BACKOFF;
                let wait = (waited / 4)
                    .clamp(least, most)
                    .min(self.upload_deadline - waited);
                tracing::warn!(source = %source.id, error = %error, retry_in = ?wait,
                    "recordings: an upload failed; it is tried again");
                let due = OffsetDateTime::now_utc() + wait;
                if let Err(e) = self
                    .store
                    .postpone_step(&self.owner, id, due, Postponed::UploadFailed)
                    .await
                {
                    tracing::warn!(error = %e, "recordings: postponing an upload failed; its lease will run out");
                }
                None
            }
            Err(error) => {
                metrics::counter!("herald_uploads_total", "outcome" => "failed").increment(1);
                Some(FileOutcome::Failed(format!(
                    "upload failed: {error}; the local file is kept"
                )))
            }
        }
    }

    /// Runs until `cancel` fires. Each step is a task of its own: it is ingested as soon
    /// as it is done, and a panic in it ends that step alone (it is failed, not retried).
    /// Steps in progress when `cancel` fires are left leased, and taken again after a
    /// restart.
    pub async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let mut running: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, ClaimedStep> = HashMap::new();
        let mut last_forget = OffsetDateTime::UNIX_EPOCH;
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !cancel.is_cancelled() {
            let now = OffsetDateTime::now_utc();
            if now - last_forget > time::Duration::HOUR {
                last_forget = now;
                if let Err(e) = this.store.forget_done_steps(now - KEEP_DONE_STEPS).await {
                    tracing::warn!(error = %e, "recordings: forgetting old steps failed");
                }
            }
            let room =
                STREAMS_AT_ONCE.saturating_sub(u32::try_from(running.len()).unwrap_or(u32::MAX));
            let files_held = in_flight
                .values()
                .filter(|c| c.step.kind == StepKind::File)
                .count();
            let file_room =
                FILES_HELD.saturating_sub(u32::try_from(files_held).unwrap_or(u32::MAX));
            let busy = tokio::select! {
                () = cancel.cancelled() => break,
                started = this.start_due(now, room, file_room) => started,
            };
            let sleep = match busy {
                Ok(started) if !started.is_empty() => {
                    for claimed in started {
                        let task = Arc::clone(&this).take(claimed.clone());
                        let handle = running.spawn(task);
                        in_flight.insert(handle.id(), claimed);
                    }
                    Duration::ZERO
                }
                Ok(_) => match this.store.next_recording_wake(now).await {
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
            if sleep.is_zero() {
                // Reap what has finished without waiting, then look again.
                while let Some(joined) = running.try_join_next_with_id() {
                    this.reap(joined, &mut in_flight).await;
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = this.hooks.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    this.reap(joined, &mut in_flight).await;
                }
                _ = renew.tick() => this.renew(&in_flight).await,
            }
        }
        running.abort_all();
    }

    /// Ends the sessions whose pause is over, then leases the next step of up to `room`
    /// streams that have one due, of which up to `file_room` are files to read. Empty when
    /// nothing was due.
    async fn start_due(
        &self,
        now: OffsetDateTime,
        room: u32,
        file_room: u32,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        let ended = self.store.end_paused_sessions(now).await?;
        if room == 0 {
            return Ok(Vec::new());
        }
        // Sessions that just ended queued their last steps: they are claimed with the rest.
        let claimed = self
            .store
            .claim_steps(&self.owner, now, now + LEASE, room, file_room)
            .await?;
        if claimed.is_empty() && ended > 0 {
            tracing::debug!(ended, "recordings: sessions ended");
        }
        Ok(claimed)
    }

    /// Renews the leases of the steps in progress. One whose lease another node took (this
    /// one was too slow to renew) goes on; what it then does is refused by owner.
    async fn renew(&self, in_flight: &HashMap<tokio::task::Id, ClaimedStep>) {
        if in_flight.is_empty() {
            return;
        }
        let ids: Vec<i64> = in_flight.values().map(|c| c.id).collect();
        let until = OffsetDateTime::now_utc() + LEASE;
        match self
            .store
            .extend_step_leases(&self.owner, &ids, until)
            .await
        {
            Ok(kept) if kept.len() < ids.len() => {
                tracing::warn!(
                    lost = ids.len() - kept.len(),
                    "recordings: steps in progress were taken over by another node"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "recordings: renewing step leases failed"),
        }
    }

    /// A step's task has ended. One that panicked is failed with a reason in Herald's
    /// words and done: it cannot stop its stream, nor run again.
    async fn reap(
        &self,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        in_flight: &mut HashMap<tokio::task::Id, ClaimedStep>,
    ) {
        let (id, error) = match joined {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(claimed) = in_flight.remove(&id) else {
            return;
        };
        let Some(error) = error else { return };
        if error.is_cancelled() {
            return;
        }
        tracing::error!(source = %claimed.source.id, step = claimed.id, error = %error,
            "recordings: reading a step panicked; the step is failed");
        metrics::counter!("herald_recording_steps_panicked_total").increment(1);
        let outcome = (claimed.step.kind == StepKind::File)
            .then(|| FileOutcome::Failed(READING_FAILED.to_owned()));
        if let (Some(FileOutcome::Failed(why)), Some(path)) = (&outcome, &claimed.step.path) {
            self.note_failed(&claimed.source, path, why).await;
        }
        let events = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            events_of(&claimed.source, &claimed.step, outcome.as_ref())
        }))
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        self.finish(claimed.id, &claimed.source, events).await;
    }

    /// Takes one step: reads its file if it has one (in its turn, see [`FileTurns`]),
    /// ingests its events and marks it done, so its stream's next step can go.
    async fn take(self: Arc<Self>, claimed: ClaimedStep) {
        let ClaimedStep {
            id,
            source,
            step,
            attempts,
        } = claimed;
        let outcome = match (step.kind, &step.path) {
            (StepKind::File, Some(_)) if attempts > MOST_ATTEMPTS => {
                Some(FileOutcome::Failed(format!(
                    "Herald stopped while reading this file {} times (see Herald's log); it is \
                     not tried again",
                    attempts - 1
                )))
            }
            (StepKind::File, Some(path)) => {
                let read = async {
                    let _turn = self
                        .files
                        .take(source.project_id.as_str(), &source.id)
                        .await;
                    self.reader.read(&source.spec.record_dir, path).await
                };
                match read.await {
                    Ok(outcome) => {
                        match self
                            .store_file(id, &source, &step, outcome.checked(step.at))
                            .await
                        {
                            Some(outcome) => Some(outcome),
                            // Postponed: the upload is tried again.
                            None => return,
                        }
                    }
                    Err(unavailable) => {
                        // `?`: a hook's path may hold newlines and escapes; logged escaped.
                        tracing::warn!(source = %source.id, file = ?path, error = %unavailable,
                            "recordings: the file waits until ffprobe can be run");
                        self.postpone(id).await;
                        return;
                    }
                }
            }
            _ => None,
        };
        if let (Some(FileOutcome::Failed(why)), Some(path)) = (&outcome, &step.path) {
            self.note_failed(&source, path, why).await;
        }
        let events = events_of(&source, &step, outcome.as_ref()).unwrap_or_else(|e| {
            // The hook's names broke an event rule; no retry can change that.
            tracing::error!(source = %source.id, error = %e, "recordings: the step makes no valid event");
            Vec::new()
        });
        let finished = self.finish(id, &source, events).await;
        // The local file goes only once its object is confirmed and its event durable; a
        // file without a single frame (nginx-rtmp's stub at the end of a publish) holds
        // nothing to store, and goes too.
        let stored_or_empty = match &outcome {
            Some(FileOutcome::Complete(facts)) if facts.stored.is_some() => {
                Some(source.spec.record_dir.path().join(&facts.relative_path))
            }
            Some(FileOutcome::Empty) => step
                .path
                .as_deref()
                .and_then(|path| source.spec.record_dir.resolve(None, path))
                // Read as inside it already; checked again before anything is deleted.
                .filter(|local| source.spec.record_dir.relative(local).is_some()),
            _ => None,
        };
        if let (true, Some(local), Some(storage)) =
            (finished, stored_or_empty, &source.spec.storage)
            && storage.delete_local
            && let Err(e) = tokio::fs::remove_file(&local).await
        {
            tracing::warn!(source = %source.id, file = ?local, error = %e,
                "recordings: deleting an uploaded file failed");
        }
    }

    /// A file that cannot be reported: logged, counted, shown in the source's status.
    async fn note_failed(&self, source: &RecordingSource, path: &str, why: &str) {
        // `?`: a hook's path may hold newlines and terminal escapes that would forge log
        // lines; Debug writes them escaped. `why` quotes the path the same way.
        tracing::warn!(source = %source.id, file = ?path, reason = ?why, "recordings: a file cannot be reported");
        metrics::counter!("herald_recording_files_failed_total").increment(1);
        let error = SourceError {
            at: OffsetDateTime::now_utc(),
            file: path.to_owned(),
            message: why.to_owned(),
        };
        if let Err(e) = self.store.note_source_error(&source.id, &error).await {
            tracing::warn!(error = %e, "recordings: noting a source's error failed");
        }
    }

    /// Ingests a step's events in one commit and marks the step done; postpones it when
    /// the ingest fails. Whether its events are durable.
    async fn finish(&self, id: i64, source: &RecordingSource, events: Vec<DerivedEvent>) -> bool {
        let now = OffsetDateTime::now_utc();
        if let Err(e) = self
            .ingest(&source.project_id, &source.spec.target, events, now)
            .await
        {
            tracing::warn!(project = %source.project_id, error = %e, "recordings: ingesting a step's events failed");
            self.postpone(id).await;
            return false;
        }
        if let Err(e) = self.store.finish_steps(&self.owner, &[id], now).await {
            // Its lease runs out and it is taken again; its events are accepted once.
            tracing::warn!(error = %e, "recordings: marking a step done failed");
        }
        // The stream's next step may be due now.
        self.hooks.notify_one();
        true
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
        if let Err(e) = self
            .store
            .postpone_step(&self.owner, id, due, Postponed::Reading)
            .await
        {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use herald_core::hook::{HookCall, HookFile, StreamKey};
    use herald_core::recording::FileFacts;
    use herald_core::secrets::MasterKey;
    use herald_core::source::SourceSpec;
    use herald_store::sqlite::SqliteStore;
    use secrecy::SecretString;

    /// Panics on any file named `boom.flv`, never finishes reading `slow.flv`; finds every
    /// other file a short FLV.
    struct Exploding;

    impl FileReader for Exploding {
        fn read<'a>(
            &'a self,
            _record_dir: &'a RecordDir,
            path: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<FileOutcome, ProbeUnavailable>> + Send + 'a>>
        {
            Box::pin(async move {
                assert!(!path.ends_with("boom.flv"), "a reader bug");
                if path.ends_with("slow.flv") {
                    std::future::pending::<()>().await;
                }
                Ok(FileOutcome::Complete(FileFacts {
                    relative_path: path.trim_start_matches("/rec/").into(),
                    size: 100,
                    duration: 2.0,
                    width: None,
                    height: None,
                    record_format: "FLV".into(),
                    stored: None,
                }))
            })
        }
    }

    fn source(project: &str) -> RecordingSource {
        RecordingSource {
            id: RecordingSource::new_id(),
            project_id: ProjectId::parse("project_id", project).unwrap(),
            spec: SourceSpec::parse(
                br#"{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "/rec"}"#,
            )
            .unwrap(),
            secret: SecretString::from(format!("secret-of-{project}")),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    fn done(path: &str) -> HookCall {
        HookCall::FileDone {
            stream: StreamKey {
                app: "live".into(),
                stream: "cam".into(),
            },
            file: HookFile {
                base: None,
                path: path.into(),
            },
        }
    }

    /// An embedded store in a temporary dir, and the sources of the tests.
    struct Fixture {
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn with_sources(sources: &[&RecordingSource]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (master, _) = MasterKey::generate();
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(dir.path(), master).await.unwrap());
            for source in sources {
                store.insert_source(source).await.unwrap();
            }
            Self { store, _dir: dir }
        }

        /// Starts a tracker reading with `reader`; cancel the token and await the task to
        /// stop it.
        fn run_tracker(
            &self,
            reader: impl FileReader + 'static,
        ) -> (tokio::task::JoinHandle<()>, CancellationToken) {
            let tracker = Tracker::new(
                self.store.clone(),
                reader,
                Arc::new(Notify::new()),
                Arc::new(Notify::new()),
            );
            let cancel = CancellationToken::new();
            (tokio::spawn(tracker.run(cancel.clone())), cancel)
        }

        async fn view(&self, source: &RecordingSource) -> herald_store::SourceView {
            self.store
                .get_source(&source.project_id, &source.id)
                .await
                .unwrap()
                .unwrap()
        }

        /// Waits (at most 20 s) until `done` holds for `source`'s view; returns that view.
        async fn until(
            &self,
            source: &RecordingSource,
            done: impl Fn(&herald_store::SourceView) -> bool,
            why: &str,
        ) -> herald_store::SourceView {
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let view = self.view(source).await;
                    if done(&view) {
                        return view;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect(why)
        }
    }

    /// A panic while reading one file once ended the tracker for every project, and the
    /// step, given back at start, panicked again after every restart. Now it fails that
    /// step alone: its stream goes on, and so does every other source.
    #[tokio::test]
    async fn a_step_that_panics_is_failed_and_nothing_else_stops() {
        let (a, b) = (source("pa"), source("pb"));
        let fixture = Fixture::with_sources(&[&a, &b]).await;
        let hooks = [
            (a.clone(), done("/rec/boom.flv")),
            (a.clone(), done("/rec/after.flv")),
            (b.clone(), done("/rec/good.flv")),
        ];
        fixture
            .store
            .apply_hooks(&hooks, OffsetDateTime::now_utc())
            .await
            .unwrap();
        let (run, cancel) = fixture.run_tracker(Exploding);
        fixture
            .until(&b, |v| v.files_waiting == 0, "B's file is done")
            .await;
        let va = fixture
            .until(
                &a,
                |v| v.files_waiting == 0,
                "every file is done although one read panicked",
            )
            .await;
        let error = va
            .last_error
            .expect("the panicked file is the source's error");
        assert_eq!(error.file, "/rec/boom.flv");
        assert_eq!(error.message, READING_FAILED);
        assert!(fixture.view(&b).await.last_error.is_none());
        assert!(!run.is_finished(), "the tracker still runs");
        cancel.cancel();
        run.await.unwrap();
    }

    /// A round once waited for every file it had taken (`join_all`) before ingesting any:
    /// one file that kept ffprobe busy held back every other project's events. Each step
    /// is now ingested as soon as it is done.
    #[tokio::test]
    async fn a_slow_file_holds_back_no_other_project() {
        let (a, b) = (source("pa"), source("pb"));
        let fixture = Fixture::with_sources(&[&a, &b]).await;
        let hooks = [
            (a.clone(), done("/rec/slow.flv")),
            (b.clone(), done("/rec/one.flv")),
        ];
        fixture
            .store
            .apply_hooks(&hooks, OffsetDateTime::now_utc())
            .await
            .unwrap();
        let (run, cancel) = fixture.run_tracker(Exploding);
        fixture
            .until(
                &b,
                |v| v.files_waiting == 0,
                "B's file is reported while A's is still read",
            )
            .await;
        assert_eq!(
            fixture.view(&a).await.files_waiting,
            1,
            "A's slow file is still being read"
        );
        cancel.cancel();
        run.await.unwrap();
    }

    /// A step whose reading ended its tracker (a kill during ffprobe, say) was given back
    /// at every start and taken forever. After a few claims it is failed instead.
    #[tokio::test]
    async fn a_step_that_keeps_ending_its_tracker_is_failed() {
        let a = source("pa");
        let fixture = Fixture::with_sources(&[&a]).await;
        let store = &fixture.store;
        let now = OffsetDateTime::now_utc();
        store
            .apply_hooks(&[(a.clone(), done("/rec/crash.flv"))], now)
            .await
            .unwrap();
        // The RECORD_START step is done; then the file is claimed by trackers that died
        // while reading it, again and again.
        let start = store.claim_steps("dead", now, now, 10, 10).await.unwrap();
        store
            .finish_steps("dead", &[start[0].id], now)
            .await
            .unwrap();
        for _ in 0..MOST_ATTEMPTS {
            let claimed = store.claim_steps("dead", now, now, 10, 10).await.unwrap();
            assert_eq!(claimed.len(), 1);
        }
        let (run, cancel) = fixture.run_tracker(Exploding);
        let view = fixture
            .until(
                &a,
                |v| v.files_waiting == 0 && v.last_error.is_some(),
                "the file is failed, not read a sixth time",
            )
            .await;
        let error = view.last_error.unwrap();
        assert!(
            error.message.contains("not tried again"),
            "{}",
            error.message
        );
        cancel.cancel();
        run.await.unwrap();
    }

    /// A log line's output, for the test below.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A hook's path was logged raw (`file = %path`): newlines and ANSI escapes in it
    /// forged whole log lines. Paths are logged escaped.
    #[tokio::test]
    async fn a_hooks_path_cannot_forge_log_lines() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let a = source("pa");
        let fixture = Fixture::with_sources(&[&a]).await;
        let forged = "/rec/x\n2026-12-06T00:00:00.000000Z  INFO herald: \u{1b}[32msignature verified\u{1b}[0m\n.txt";
        fixture
            .store
            .apply_hooks(&[(a.clone(), done(forged))], OffsetDateTime::now_utc())
            .await
            .unwrap();
        let (run, cancel) = fixture.run_tracker(Prober::new(
            "ffprobe",
            herald_core::source::RecordRoots::default(),
        ));
        fixture
            .until(
                &a,
                |v| v.files_waiting == 0 && v.last_error.is_some(),
                "the forged file is failed",
            )
            .await;
        cancel.cancel();
        run.await.unwrap();
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("a file cannot be reported"), "{out}");
        assert!(!out.contains('\u{1b}'), "a raw escape in the log: {out}");
        assert!(
            !out.lines().any(|l| l.starts_with("2026-12-06T00:00:00")),
            "a forged line: {out}"
        );
    }
}
