//! One behaviour suite for every store backend. Each backend's test opens a fresh store
//! and hands it to [`run_suite`]: SQLite in a temporary directory, PostgreSQL in a fresh
//! schema of `HERALD_TEST_DATABASE_URL` (skipped when it is unset).

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_core::config::callback_url::CallbackUrl;
use herald_core::config::live::{LiveCallbackConfig, LiveConfigRequest, SignType};
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::project::ProjectId;
use herald_core::secrets::{MasterKey, token_digest};
use herald_core::signing::LiveSigning;
use herald_store::postgres::PgStore;
use herald_store::sqlite::{DATABASE_FILE, SqliteStore};
use herald_store::testing::TestSchema;
use std::collections::HashMap;

use herald_store::{
    Accepted, AccessKey, AfterAttempt, AttemptRecord, ClaimLimits, ClaimedDelivery, Completion,
    Credentials, DeliveryFilter, DeliveryStatus, DeliveryView, Lease, LiveConfigFilter,
    MOST_COUNTED_DELIVERIES, NewToken, Notification, Page, Postponed, QueueStats, Recorded,
    ReplayTarget, Replayed, RetryFilter, RetryOutcome, Store, StoreError,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

fn project(name: &str) -> ProjectId {
    ProjectId::parse("project_id", name).unwrap()
}

fn config(project_id: &str, id: &str, body: &str, at: OffsetDateTime) -> LiveCallbackConfig {
    LiveCallbackConfig {
        id: id.to_owned(),
        project_id: project(project_id),
        spec: LiveConfigRequest::parse(body.as_bytes(), false)
            .unwrap()
            .into_new_spec(),
        create_time: at,
        update_time: at,
    }
}

async fn run_suite(store: &dyn Store) {
    store.ping().await.unwrap();
    access_keys(store).await;
    tokens(store).await;
    live_configs(store).await;
    ingest_matches_and_is_idempotent(store).await;
    concurrent_ingests_are_each_accepted_once(store).await;
    claim_leases_each_due_delivery_once(store).await;
    each_stream_is_delivered_in_acceptance_order(store).await;
    completions_count_only_under_a_live_lease(store).await;
    deliveries_keep_the_config_they_were_accepted_under(store).await;
    delivery_log_retry_and_stats(store).await;
    claims_share_out_endpoint_room(store).await;
    a_deleted_configs_deliveries_are_never_sent_again(store).await;
    an_early_rescue_requeues_due_now(store).await;
    the_rescuer_honours_the_attempt_limit(store).await;
    bulk_retry_requeues_matches_once_in_stream_order(store).await;
    replay_sends_the_matching_history_again_in_order(store).await;
    recording_steps_go_stream_by_stream_in_order(store).await;
    a_session_that_wrote_no_file_ends_saying_so(store).await;
    a_step_taken_over_belongs_to_its_new_owner(store).await;
    a_claim_takes_sources_in_turn_and_only_the_files_it_can_read(store).await;
    a_sources_storage_reads_back_as_created(store).await;
}

/// A source's format and bucket (SPEC §7.1, issue 26) read back as created, the secret
/// access key opened from its sealed copy; a source without them reads back without.
async fn a_sources_storage_reads_back_as_created(store: &dyn Store) {
    use herald_core::source::{RecordingSource, SourceSpec};
    use herald_core::storage::RecordFormat;
    let t0 = datetime!(2026-12-06 08:00 UTC);
    let make = |body: &str, secret: &str| RecordingSource {
        id: RecordingSource::new_id(),
        project_id: project("stored"),
        spec: SourceSpec::parse_allowing(body.as_bytes(), true).unwrap(),
        secret: SecretString::from(secret.to_owned()),
        created_at: t0,
    };
    let with = make(
        r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com",
            "record_dir": "/rec/stored", "record_format": "MP4",
            "storage": {"endpoint": "http://127.0.0.1:3900", "region": "garage",
                "bucket": "recordings", "access_key_id": "GK0123",
                "secret_access_key": "storage-secret-0123456789", "path_style": true,
                "object_prefix": "rec/{stream}/{file_start_time_unix}", "delete_local": true}}"#,
        "hooksecret-stored-0123456789abcdef",
    );
    let without = make(
        r#"{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "/rec/plain"}"#,
        "hooksecret-plain-0123456789abcdef",
    );
    store.insert_source(&with).await.unwrap();
    store.insert_source(&without).await.unwrap();
    let read = store
        .get_source(&project("stored"), &with.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.source.spec, with.spec);
    assert_eq!(read.source.spec.record_format, Some(RecordFormat::Mp4));
    let storage = read.source.spec.storage.as_ref().unwrap();
    assert_eq!(
        storage.secret_access_key.expose_secret(),
        "storage-secret-0123456789"
    );
    assert_eq!(
        storage.object_prefix.as_str(),
        "rec/{stream}/{file_start_time_unix}"
    );
    let read = store
        .get_source(&project("stored"), &without.id)
        .await
        .unwrap()
        .unwrap();
    assert!(read.source.spec.storage.is_none());
    assert!(read.source.spec.record_format.is_none());
    let (_, listed) = store
        .list_sources(
            &project("stored"),
            Page {
                offset: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(store.delete_source(None, &with.id).await.unwrap());
    assert!(store.delete_source(None, &without.id).await.unwrap());
}

/// Claims once took every due step oldest first, up to 64, files included: one source
/// with many streams came before every other, and a node leased files it would only
/// read much later while other nodes idled. Now each source's first step comes before
/// any source's second, and at most `files` files are leased.
async fn a_claim_takes_sources_in_turn_and_only_the_files_it_can_read(store: &dyn Store) {
    use herald_core::hook::{HookCall, HookFile, StreamKey};
    use herald_core::recording::StepKind;
    use herald_core::source::{RecordingSource, SourceSpec};
    let t0 = datetime!(2026-12-04 08:00 UTC);
    let make = |dir: &str, secret: &str| {
        RecordingSource {
        id: RecordingSource::new_id(),
        project_id: project("turns"),
        spec: SourceSpec::parse(
            format!(r#"{{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "{dir}"}}"#)
                .as_bytes(),
        )
        .unwrap(),
        secret: SecretString::from(secret.to_owned()),
        created_at: t0,
    }
    };
    let (busy, quiet) = (
        make("/rec/busy", "hooksecret-busy-0123456789abcdef"),
        make("/rec/quiet", "hooksecret-quiet-0123456789abcdef"),
    );
    store.insert_source(&busy).await.unwrap();
    store.insert_source(&quiet).await.unwrap();
    let file = |stream: &str, dir: &str| HookCall::FileDone {
        stream: StreamKey {
            app: "live".into(),
            stream: stream.into(),
        },
        file: HookFile {
            base: None,
            path: format!("{dir}/{stream}.flv"),
        },
    };
    for stream in ["a", "b", "c"] {
        apply(store, &busy, file(stream, "/rec/busy"), t0).await;
    }
    apply(store, &quiet, file("q", "/rec/quiet"), t0).await;
    let mine = |claimed: &[herald_store::ClaimedStep]| -> Vec<(String, StepKind)> {
        claimed
            .iter()
            .filter(|c| c.source.id == busy.id || c.source.id == quiet.id)
            .map(|c| (c.step.stream.stream.clone(), c.step.kind))
            .collect()
    };
    // The four RECORD_START steps: no file among them.
    let starts = store
        .claim_steps("n", t0, t0 + secs(60), 10, 0)
        .await
        .unwrap();
    assert_eq!(mine(&starts).len(), 4, "{:?}", mine(&starts));
    assert!(mine(&starts).iter().all(|(_, k)| *k == StepKind::Start));
    let ids: Vec<i64> = starts.iter().map(|c| c.id).collect();
    store.finish_steps("n", &ids, t0).await.unwrap();
    // Now four files are due: two are leased, the busy source's first and the quiet one's.
    let files = store
        .claim_steps("n", t0, t0 + secs(60), 10, 2)
        .await
        .unwrap();
    let mut got: Vec<String> = mine(&files).into_iter().map(|(s, _)| s).collect();
    got.sort();
    assert_eq!(got, ["a", "q"]);
    let rest = store
        .claim_steps("m", t0, t0 + secs(60), 10, 5)
        .await
        .unwrap();
    let mut got: Vec<String> = mine(&rest).into_iter().map(|(s, _)| s).collect();
    got.sort();
    assert_eq!(got, ["b", "c"]);
    assert!(store.delete_source(None, &busy.id).await.unwrap());
    assert!(store.delete_source(None, &quiet.id).await.unwrap());
}

/// Steps were leased but not owned: a node whose lease ran out could postpone (or finish)
/// a step another node had taken over, clearing that node's lease. Now finishing,
/// postponing and extending check the owner; claims count attempts, postponing does not.
async fn a_step_taken_over_belongs_to_its_new_owner(store: &dyn Store) {
    use herald_core::hook::{HookCall, HookFile, StreamKey};
    use herald_core::source::{RecordingSource, SourceSpec};
    let t0 = datetime!(2026-12-03 08:00 UTC);
    let source = RecordingSource {
        id: RecordingSource::new_id(),
        project_id: project("owners"),
        spec: SourceSpec::parse(
            br#"{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "/rec/owners"}"#,
        )
        .unwrap(),
        secret: SecretString::from("hooksecret-owners-0123456789abcdef"),
        created_at: t0,
    };
    store.insert_source(&source).await.unwrap();
    let file = HookCall::FileDone {
        stream: StreamKey {
            app: "live".into(),
            stream: "own".into(),
        },
        file: HookFile {
            base: None,
            path: "/rec/owners/a.flv".into(),
        },
    };
    // Publish-less file: RECORD_START then the file.
    assert_eq!(apply(store, &source, file, t0).await, 2);
    let start = store
        .claim_steps("a", t0, t0 + secs(60), 10, 10)
        .await
        .unwrap();
    let start = start.iter().find(|c| c.source.id == source.id).unwrap();
    assert_eq!(start.attempts, 1);
    assert_eq!(
        store.finish_steps("b", &[start.id], t0).await.unwrap(),
        0,
        "not b's"
    );
    assert_eq!(store.finish_steps("a", &[start.id], t0).await.unwrap(), 1);
    let claimed = store
        .claim_steps("a", t0, t0 + secs(60), 10, 10)
        .await
        .unwrap();
    let step = claimed
        .iter()
        .find(|c| c.source.id == source.id)
        .unwrap()
        .clone();
    assert_eq!(step.attempts, 1);
    // a's lease runs out; b takes the step over.
    let later = t0 + secs(61);
    assert_eq!(
        store
            .extend_step_leases("a", &[step.id], later + secs(60))
            .await
            .unwrap(),
        vec![step.id],
        "a still owns it until someone takes it"
    );
    let taken = store
        .claim_steps("b", later + secs(61), later + secs(121), 10, 10)
        .await
        .unwrap();
    let taken = taken
        .iter()
        .find(|c| c.id == step.id)
        .expect("b takes the expired step");
    assert_eq!(taken.attempts, 2);
    let now = later + secs(62);
    // a's late calls change nothing: b keeps its lease.
    store
        .postpone_step("a", step.id, now + secs(300), Postponed::Reading)
        .await
        .unwrap();
    assert!(
        store
            .extend_step_leases("a", &[step.id], now + secs(600))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.finish_steps("a", &[step.id], now).await.unwrap(), 0);
    assert!(
        store
            .claim_steps("c", now, now + secs(60), 10, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.id != step.id),
        "still leased to b"
    );
    // b's postponement does not count as an attempt.
    store
        .postpone_step("b", step.id, now, Postponed::Reading)
        .await
        .unwrap();
    let again = store
        .claim_steps("c", now, now + secs(60), 10, 10)
        .await
        .unwrap();
    let again = again.iter().find(|c| c.id == step.id).unwrap();
    assert_eq!(again.attempts, 2);
    assert_eq!(store.finish_steps("c", &[step.id], now).await.unwrap(), 1);
    assert!(store.delete_source(None, &source.id).await.unwrap());
}

/// A session that announced a file and ended without finishing one (the media server
/// could not write into its record dir) ends with an over step that says how many files
/// were announced, and the source's `last_error` says no file was written.
async fn a_session_that_wrote_no_file_ends_saying_so(store: &dyn Store) {
    use herald_core::hook::{HookCall, StreamKey};
    use herald_core::recording::StepKind;
    use herald_core::source::{RecordingSource, SourceSpec};
    let t0 = datetime!(2026-12-03 08:00 UTC);
    let source = RecordingSource {
        id: RecordingSource::new_id(),
        project_id: project("nofile"),
        spec: SourceSpec::parse(
            br#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/nofile", "max_pause": "10s"}"#,
        )
        .unwrap(),
        secret: SecretString::from("hooksecretNOFILE456789abcdefABCDEF"),
        created_at: t0,
    };
    store.insert_source(&source).await.unwrap();
    let key = StreamKey {
        app: "live".into(),
        stream: "denied".into(),
    };
    apply(store, &source, HookCall::Publish(key.clone()), t0).await;
    apply(store, &source, HookCall::Unpublish(key), t0).await;
    let lease = t0 + secs(60);
    loop {
        let steps = store.claim_steps("n", t0, lease, 10, 10).await.unwrap();
        let mine: Vec<i64> = steps
            .iter()
            .filter(|s| s.source.id == source.id)
            .map(|s| s.id)
            .collect();
        store
            .finish_steps("n", &steps.iter().map(|s| s.id).collect::<Vec<_>>(), t0)
            .await
            .unwrap();
        if mine.is_empty() {
            break;
        }
    }
    let over_at = t0 + secs(10);
    assert!(store.end_paused_sessions(over_at).await.unwrap() >= 1);
    let over = store
        .claim_steps("n", over_at, over_at + secs(60), 10, 10)
        .await
        .unwrap();
    let over = over
        .iter()
        .find(|s| s.source.id == source.id)
        .expect("the session's over step");
    assert_eq!(over.step.kind, StepKind::Over);
    assert_eq!(over.step.file_no, 1, "one file announced, none written");
    store.finish_steps("n", &[over.id], over_at).await.unwrap();
    let view = store
        .get_source(&project("nofile"), &source.id)
        .await
        .unwrap()
        .unwrap();
    let error = view
        .last_error
        .expect("last_error says no file was written");
    assert!(
        error.message.starts_with("no file was written"),
        "{}",
        error.message
    );
    assert_eq!(error.file, "/nofile");
}

/// Applies one hook, alone in its commit; returns how many steps it queued.
async fn apply(
    store: &dyn Store,
    source: &herald_core::source::RecordingSource,
    call: herald_core::hook::HookCall,
    at: OffsetDateTime,
) -> usize {
    store
        .apply_hooks(&[(source.clone(), call)], at)
        .await
        .unwrap()[0]
}

/// Hooks become steps taken one at a time per stream, in order; a paused session ends
/// once its pause is over and its steps are done; a repeated hook queues nothing.
async fn recording_steps_go_stream_by_stream_in_order(store: &dyn Store) {
    use herald_core::hook::{HookCall, HookFile, StreamKey};
    use herald_core::recording::StepKind;
    use herald_core::source::{RecordingSource, SourceSpec};
    let t0 = datetime!(2026-12-02 08:00 UTC);
    let source = RecordingSource {
        id: RecordingSource::new_id(),
        project_id: project("rec"),
        spec: SourceSpec::parse(
            br#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec", "max_pause": "10s"}"#,
        )
        .unwrap(),
        secret: SecretString::from("hooksecret0123456789abcdefABCDEF"),
        created_at: t0,
    };
    store.insert_source(&source).await.unwrap();
    let found = store
        .find_source_by_secret(&token_digest("hooksecret0123456789abcdefABCDEF"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, source.id);
    assert!(
        store
            .find_source_by_secret(&token_digest("x"))
            .await
            .unwrap()
            .is_none()
    );
    let key = |stream: &str| StreamKey {
        app: "live".into(),
        stream: stream.into(),
    };
    let done = |path: &str| HookCall::FileDone {
        stream: key("a"),
        file: HookFile {
            base: None,
            path: path.into(),
        },
    };
    assert_eq!(
        apply(store, &source, HookCall::Publish(key("a")), t0).await,
        2
    );
    assert_eq!(
        apply(store, &source, HookCall::Publish(key("b")), t0).await,
        2
    );
    assert_eq!(
        apply(store, &source, HookCall::Publish(key("a")), t0).await,
        0
    );
    let lease = t0 + secs(60);
    let kinds = |claimed: &[herald_store::ClaimedStep]| -> Vec<(String, StepKind)> {
        claimed
            .iter()
            .map(|c| (c.step.stream.stream.clone(), c.step.kind))
            .collect()
    };
    let first = store.claim_steps("n1", t0, lease, 10, 10).await.unwrap();
    assert_eq!(
        kinds(&first),
        [("a".into(), StepKind::Start), ("b".into(), StepKind::Start)]
    );
    assert!(
        store
            .claim_steps("n1", t0, lease, 10, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased heads block their streams"
    );
    store.finish_steps("n1", &[first[0].id], t0).await.unwrap();
    let next = store.claim_steps("n1", t0, lease, 10, 10).await.unwrap();
    assert_eq!(kinds(&next), [("a".into(), StepKind::FileStart)]);
    assert_eq!(next[0].step.file_no, 1);
    assert_eq!(apply(store, &source, done("/rec/a-1.flv"), t0).await, 2);
    assert_eq!(
        apply(store, &source, done("/rec/a-1.flv"), t0).await,
        0,
        "a repeat"
    );
    let t1 = t0 + secs(1);
    apply(store, &source, HookCall::Unpublish(key("a")), t1).await;
    let view = store
        .get_source(&project("rec"), &source.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.open_sessions, view.files_waiting), (2, 1));
    // A lease that runs out lets another tracker take the step (the same step again).
    let retaken = store
        .claim_steps("n1", lease, lease + secs(60), 10, 10)
        .await
        .unwrap();
    assert_eq!(
        kinds(&retaken),
        [
            ("a".into(), StepKind::FileStart),
            ("b".into(), StepKind::Start)
        ]
    );
    for step in &retaken {
        store.finish_steps("n1", &[step.id], t1).await.unwrap();
    }
    // Across streams, oldest first.
    let file = store.claim_steps("n1", t1, lease, 10, 10).await.unwrap();
    assert_eq!(
        kinds(&file),
        [
            ("b".into(), StepKind::FileStart),
            ("a".into(), StepKind::File)
        ]
    );
    store.finish_steps("n1", &[file[0].id], t1).await.unwrap();
    store
        .postpone_step("n1", file[1].id, t1 + secs(5), Postponed::UploadFailed)
        .await
        .unwrap();
    let view = store
        .get_source(&project("rec"), &source.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (view.files_waiting, view.uploads_waiting),
        (1, 1),
        "a file whose upload failed waits for it"
    );
    assert_eq!(
        store.next_recording_wake(t1).await.unwrap(),
        Some(t1 + secs(5))
    );
    // Paused past max_pause, but a's file is not reported yet: the session waits for it.
    let over_at = t1 + secs(10);
    assert_eq!(store.end_paused_sessions(over_at).await.unwrap(), 0);
    let file = store
        .claim_steps("n1", over_at, over_at + secs(60), 10, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&file), [("a".into(), StepKind::File)]);
    assert_eq!(file[0].step.path.as_deref(), Some("/rec/a-1.flv"));
    store
        .finish_steps("n1", &[file[0].id], over_at)
        .await
        .unwrap();
    let last = store
        .claim_steps("n1", over_at, over_at + secs(60), 10, 10)
        .await
        .unwrap();
    assert_eq!(
        kinds(&last),
        [("a".into(), StepKind::FileStart)],
        "opened after the file"
    );
    store
        .finish_steps("n1", &[last[0].id], over_at)
        .await
        .unwrap();
    assert_eq!(store.end_paused_sessions(over_at).await.unwrap(), 1);
    let over = store
        .claim_steps("n1", over_at, over_at + secs(60), 10, 10)
        .await
        .unwrap();
    assert_eq!(kinds(&over), [("a".into(), StepKind::Over)]);
    assert_eq!(over[0].step.job_id, first[0].step.job_id);
    assert_eq!(over[0].step.file_no, 0, "a wrote a file");
    store
        .finish_steps("n1", &[over[0].id], over_at)
        .await
        .unwrap();
    // Hooks that share a commit see each other's changes, in order.
    let c_done = HookCall::FileDone {
        stream: key("c"),
        file: HookFile {
            base: None,
            path: "/rec/c.flv".into(),
        },
    };
    let batch = [
        (source.clone(), HookCall::Publish(key("c"))),
        (source.clone(), c_done.clone()),
        (source.clone(), c_done),
    ];
    assert_eq!(store.apply_hooks(&batch, over_at).await.unwrap(), [2, 2, 0]);
    store
        .note_source_error(
            &source.id,
            &herald_store::SourceError {
                at: t1,
                file: "/rec/x".into(),
                message: "gone".into(),
            },
        )
        .await
        .unwrap();
    let view = store
        .get_source(&project("rec"), &source.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.open_sessions, 2, "b and c are still published");
    assert_eq!(view.last_error.unwrap().message, "gone");
    assert!(
        !store
            .delete_source(Some(&project("other")), &source.id)
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_source(Some(&project("rec")), &source.id)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_steps("n1", over_at, over_at + secs(60), 10, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_sources(
                &project("rec"),
                Page {
                    offset: 0,
                    limit: 10
                }
            )
            .await
            .unwrap()
            .0,
        0
    );
}

/// Where a store's database is, to run SQL behind the store's back (to break a row as a
/// disk, an operator or a bug could). The embedded store is named too: what it holds of
/// the queue in memory is forgotten after such a write, as a restart would.
enum Behind<'s> {
    Sqlite(std::path::PathBuf, &'s SqliteStore),
    Postgres(String),
}

impl Behind<'_> {
    /// The one number `sql` selects.
    async fn count(&self, sql: &str) -> i64 {
        match self {
            Self::Sqlite(dir, _) => {
                let url = format!("sqlite:{}", dir.join(DATABASE_FILE).display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
            }
            Self::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
            }
        }
    }

    async fn execute(&self, sql: &str) {
        match self {
            Self::Sqlite(dir, store) => {
                let url = format!("sqlite:{}", dir.join(DATABASE_FILE).display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
                store.forget_due_window();
            }
            Self::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
    }
}

/// A transaction begun behind a store's back and left open: it holds what it wrote (the
/// embedded store's write lock, PostgreSQL's row locks) until it commits.
enum HeldTx<'s> {
    Sqlite(sqlx::SqliteConnection, &'s SqliteStore),
    Postgres {
        conn: sqlx::PgConnection,
        /// The server process of the transaction, whose locks others may wait for.
        pid: i32,
        /// Where to look at who waits, beside it.
        url: String,
    },
}

impl Behind<'_> {
    /// Begins a transaction and runs `sql` in it, uncommitted.
    async fn begin(&self, sql: &str) -> HeldTx<'_> {
        use sqlx::Connection;
        match self {
            Self::Sqlite(dir, store) => {
                let url = format!("sqlite:{}", dir.join(DATABASE_FILE).display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
                HeldTx::Sqlite(conn, store)
            }
            Self::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
                HeldTx::Postgres {
                    conn,
                    pid,
                    url: url.clone(),
                }
            }
        }
    }
}

impl HeldTx<'_> {
    /// Returns once another transaction waits for one of this one's locks. On SQLite at
    /// once: its writers are serial, so a writer sees this transaction whole or not at all
    /// whenever it commits, and how long one waits for the lock cannot be observed.
    async fn until_another_waits(&self) {
        let Self::Postgres { pid, url, .. } = self else {
            return;
        };
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))",
            )
            .bind(*pid)
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting {
                return;
            }
            // Polled: PostgreSQL has no event for "someone started waiting".
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn commit(self) {
        match self {
            Self::Sqlite(mut conn, store) => {
                sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
                store.forget_due_window();
            }
            Self::Postgres { mut conn, .. } => {
                sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// What a store must survive (no poison pills) and forget (retention), on a fresh store
/// (retention's counts are exact only where no other test left history).
async fn run_hardening_suite(store: &dyn Store, behind: &Behind<'_>) {
    a_cancelled_delivery_stays_cancelled_whatever_its_lease_brings(store, behind).await;
    retention_keeps_a_delivery_reopened_while_it_runs(store, behind).await;
    retention_deletes_only_finished_history(store).await;
    an_unreadable_delivery_is_dead_and_the_claim_goes_on(store, behind).await;
    a_claim_goes_on_when_an_unreadable_row_cannot_be_marked_dead(store, behind).await;
    a_corrupt_config_fails_only_its_own_ingest(store, behind).await;
    outcomes_are_written_beside_ingests_whatever_those_meet(store, behind).await;
    a_success_is_kept_in_its_delivery_row(store, behind).await;
    the_log_counts_up_to_a_bound(store).await;
}

/// A success is kept in its delivery's row, so a first-try success writes no attempt row;
/// `delivery_attempts` holds the failed attempts. The log and the endpoint figures show
/// every attempt all the same, successes stored in `delivery_attempts` before issue 29
/// included.
async fn a_success_is_kept_in_its_delivery_row(store: &dyn Store, behind: &Behind<'_>) {
    let t0 = datetime!(2035-02-01 00:00:00 UTC);
    let p = "q-success-row";
    accept_one_per_stream(
        store,
        p,
        "cfg-success-row",
        "https://cb.example.com/row",
        &["first-try", "after-retry", "given-up"],
        t0,
    )
    .await;
    let attempt_rows = "SELECT COUNT(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
         WHERE d.config_id = 'cfg-success-row'";
    let claimed = claim(store, t0, 10).await;
    let outcomes = [
        succeeded(claimed_one(&claimed, "first-try"), t0),
        outcome(
            claimed_one(&claimed, "after-retry"),
            answer(t0, 500),
            AfterAttempt::RetryAt(t0 + secs(5)),
        ),
        outcome(
            claimed_one(&claimed, "given-up"),
            answer(t0, 410),
            AfterAttempt::Dead,
        ),
    ];
    assert_eq!(complete(store, &outcomes).await, 3);
    assert_eq!(behind.count(attempt_rows).await, 2, "the two failures only");
    let again = claim(store, t0 + secs(5), 10).await;
    assert_eq!(event_ids(&again), ["after-retry"]);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(
        complete(store, &[succeeded(&again[0], t0 + secs(6))]).await,
        1
    );
    assert_eq!(
        behind.count(attempt_rows).await,
        2,
        "no row for the success"
    );

    let attempts = |id: &'static str| async move { delivery_of(store, p, id).await.attempts };
    assert_eq!(attempts("first-try").await, [answer(t0, 200)]);
    assert_eq!(
        attempts("after-retry").await,
        [answer(t0, 500), answer(t0 + secs(6), 200)]
    );
    assert_eq!(attempts("given-up").await, [answer(t0, 410)]);
    let health = store
        .endpoint_attempts(&project(p), t0 - secs(1), t0 - secs(1))
        .await
        .unwrap();
    assert_eq!(
        health
            .iter()
            .map(|e| (e.attempts, e.successes))
            .collect::<Vec<_>>(),
        [(4, 2)],
        "{health:?}"
    );

    // A success stored as before: in delivery_attempts, with the row's columns empty.
    let first = delivery_of(store, p, "first-try").await.id;
    behind
        .execute(&format!(
            "UPDATE deliveries SET success_at_ms = NULL, success_status_code = NULL, \
                 success_latency_ms = NULL, success_response_head = NULL WHERE id = {first}"
        ))
        .await;
    behind
        .execute(&format!(
            "INSERT INTO delivery_attempts (delivery_id, attempt, at_ms, status_code, latency_ms, response_head) \
             VALUES ({first}, 1, {}, 200, 25, 'status 200')",
            (t0 - OffsetDateTime::UNIX_EPOCH).whole_milliseconds()
        ))
        .await;
    assert_eq!(attempts("first-try").await, [answer(t0, 200)]);
    let health = store
        .endpoint_attempts(&project(p), t0 - secs(1), t0 - secs(1))
        .await
        .unwrap();
    assert_eq!((health[0].attempts, health[0].successes), (4, 2));
    // Retention takes them with the rest of the finished history before it.
    let deleted = store
        .delete_finished_events(t0 + secs(7), 1000)
        .await
        .unwrap();
    assert!(deleted >= 3, "{deleted}");
    assert_eq!(behind.count(attempt_rows).await, 0);
    let (total, _) = log(store, p, None, None, ALL).await;
    assert_eq!(total, 0);
}

/// Leaves config `id`'s stored row unreadable (a subscription to no event type), as a
/// hand edit or a bad restore would: an ingest that matches it fails with `Corrupt`.
async fn corrupt_config(behind: &Behind<'_>, id: &str) {
    behind
        .execute(&format!(
            "UPDATE live_callback_configs SET notify_event_subscription = 'NO_SUCH_EVENT' WHERE id = '{id}'"
        ))
        .await;
}

/// An ingest that meets a corrupt config row fails alone: the embedded store plans the
/// ingests that share a commit together, and when that plan fails it takes them one by
/// one, so the others arriving with it are accepted all the same.
async fn a_corrupt_config_fails_only_its_own_ingest(store: &dyn Store, behind: &Behind<'_>) {
    let t0 = datetime!(2035-01-01 00:00:00 UTC);
    let p = "q-corrupt-config";
    for (id, domain) in [
        ("cfg-sound", "sound.example.com"),
        ("cfg-broken", "broken.example.com"),
    ] {
        let body = json!({"publish_domain": domain, "app": "*", "notify_callback_url": "https://cb.example.com/c"});
        add_config(store, p, id, body, t0).await;
    }
    corrupt_config(behind, "cfg-broken").await;
    let project = project(p);
    let ingests = (0..20).map(|i| {
        let domain = if i == 7 {
            "broken.example.com"
        } else {
            "sound.example.com"
        };
        let one = [event(
            &format!("cc-{i}"),
            "RECORD_FILE_COMPLETE",
            domain,
            "live",
            &format!("s{i}"),
        )];
        let project = &project;
        async move { store.ingest_live(project, &one, t0).await }
    });
    for (i, answer) in futures_util::future::join_all(ingests)
        .await
        .into_iter()
        .enumerate()
    {
        if i == 7 {
            assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
        } else {
            assert_eq!(answer.unwrap(), [accepted(&format!("cc-{i}"), 1)]);
        }
    }
    let page = Page {
        offset: 0,
        limit: 100,
    };
    let (total, _) = store
        .list_deliveries(&project, &DeliveryFilter::default(), page)
        .await
        .unwrap();
    assert_eq!(total, 19);
    behind
        .execute("DELETE FROM live_callback_configs WHERE id = 'cfg-broken'")
        .await;
    drain(store, t0).await;
}

/// Outcomes that arrive at the same moment as ingests are written all the same: a stream
/// whose delivery succeeds takes the event accepted at that moment as its next, in order;
/// and an ingest that fails beside them (the embedded store then takes the ingests that
/// share its commit one by one) fails alone, the outcomes and the other ingests written.
async fn outcomes_are_written_beside_ingests_whatever_those_meet(
    store: &dyn Store,
    behind: &Behind<'_>,
) {
    let t0 = datetime!(2035-01-15 00:00:00 UTC);
    let p = "q-beside";
    let (sound, broken) = ("sound-beside.example.com", "broken-beside.example.com");
    for (id, domain) in [("cfg-beside", sound), ("cfg-beside-broken", broken)] {
        let body = json!({"publish_domain": domain, "app": "*", "notify_callback_url": "https://cb.example.com/b"});
        add_config(store, p, id, body, t0).await;
    }
    let project = project(p);
    let on = |id: &str, domain: &str| [event(id, "RECORD_FILE_COMPLETE", domain, "live", "s")];
    store
        .ingest_live(&project, &on("b0", sound), t0)
        .await
        .unwrap();
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["b0"]);
    corrupt_config(behind, "cfg-beside-broken").await;
    // Beside an ingest that fails.
    let (done, b1, b_broken) = (
        [succeeded(&claimed[0], t0)],
        on("b1", sound),
        on("b-broken", broken),
    );
    let (recorded, next, refused) = tokio::join!(
        store.complete_deliveries(&done),
        store.ingest_live(&project, &b1, t0),
        store.ingest_live(&project, &b_broken, t0),
    );
    assert_eq!(recorded.unwrap().applied, 1);
    assert_eq!(next.unwrap(), [accepted("b1", 1)]);
    assert!(
        matches!(refused, Err(StoreError::Corrupt(_))),
        "{refused:?}"
    );
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["b1"]);
    // Beside an ingest that holds.
    let (done, b2) = ([succeeded(&claimed[0], t0)], on("b2", sound));
    let (recorded, next) = tokio::join!(
        store.complete_deliveries(&done),
        store.ingest_live(&project, &b2, t0),
    );
    assert_eq!(recorded.unwrap().applied, 1);
    assert_eq!(next.unwrap(), [accepted("b2", 1)]);
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["b2"]);
    for id in ["b0", "b1"] {
        assert_eq!(
            delivery_of(store, p, id).await.status,
            DeliveryStatus::Succeeded
        );
    }
    assert_eq!(complete(store, &[succeeded(&claimed[0], t0)]).await, 1);
    behind
        .execute("DELETE FROM live_callback_configs WHERE id = 'cfg-beside-broken'")
        .await;
    drain(store, t0).await;
}

/// The delivery log's `total` is exact up to [`MOST_COUNTED_DELIVERIES`] and that bound
/// beyond it; its pages and filters are unaffected. (Leaves deliveries pending: last.)
async fn the_log_counts_up_to_a_bound(store: &dyn Store) {
    let t0 = datetime!(2035-01-01 00:00:00 UTC);
    let p = "q-counted";
    let body = json!({"publish_domain": "many.example.com", "app": "*", "notify_callback_url": "https://cb.example.com/m"});
    add_config(store, p, "cfg-many", body, t0).await;
    let n = usize::try_from(MOST_COUNTED_DELIVERIES).unwrap() + 5;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<_> = chunk
            .iter()
            .map(|i| {
                event(
                    &format!("m{i}"),
                    "RECORD_FILE_COMPLETE",
                    "many.example.com",
                    "live",
                    &format!("s{i}"),
                )
            })
            .collect();
        store.ingest_live(&project(p), &events, t0).await.unwrap();
    }
    let page = Page {
        offset: 0,
        limit: 2,
    };
    let (total, newest) = log(store, p, None, None, page).await;
    assert_eq!(total, MOST_COUNTED_DELIVERIES);
    let ids: Vec<&str> = newest.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, [format!("m{}", n - 1), format!("m{}", n - 2)]);
    let (total, _) = log(store, p, Some(DeliveryStatus::Pending), None, page).await;
    assert_eq!(total, MOST_COUNTED_DELIVERIES);
    let (total, found) = log(store, p, None, Some("m7"), page).await;
    assert_eq!((total, found[0].event_id.as_str()), (1, "m7"));
    let (total, _) = log(store, p, Some(DeliveryStatus::Dead), None, page).await;
    assert_eq!(total, 0);
}

async fn access_keys(store: &dyn Store) {
    let key = AccessKey {
        access_key: "AKCONFORMANCE0000001".into(),
        project_id: project("p1"),
        secret_key: SecretString::from("s".repeat(40)),
        created_at: datetime!(2026-11-22 10:00:00.5 UTC),
    };
    store.insert_access_key(&key).await.unwrap();
    assert!(matches!(
        store.insert_access_key(&key).await,
        Err(StoreError::Conflict)
    ));
    let found = store
        .find_access_key(&key.access_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.project_id, key.project_id);
    assert_eq!(
        found.secret_key.expose_secret(),
        key.secret_key.expose_secret()
    );
    assert_eq!(found.created_at, key.created_at);
    assert!(store.find_access_key("NOPE").await.unwrap().is_none());
    let listed = store.list_access_keys(Some(&project("p1"))).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        store
            .list_access_keys(Some(&project("p2")))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.delete_access_key(&key.access_key).await.unwrap());
    assert!(!store.delete_access_key(&key.access_key).await.unwrap());
    assert!(
        store
            .find_access_key(&key.access_key)
            .await
            .unwrap()
            .is_none()
    );
}

/// Tokens (SPEC §6): found by digest until they expire or are revoked, listed by id.
async fn tokens(store: &dyn Store) {
    let t0 = datetime!(2030-01-01 00:00:00 UTC);
    let (forever, brief) = (token_digest("herald_token"), token_digest("brief_token"));
    for (digest, expires_at) in [(&forever, None), (&brief, Some(t0 + secs(60)))] {
        store
            .insert_token(&NewToken {
                sha256: digest,
                project_id: &project("p1"),
                created_at: t0,
                expires_at,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.find_token_project(&forever, t0).await.unwrap(),
        Some(project("p1"))
    );
    assert_eq!(
        store
            .find_token_project(&brief, t0 + secs(59))
            .await
            .unwrap(),
        Some(project("p1"))
    );
    assert_eq!(
        store
            .find_token_project(&brief, t0 + secs(60))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_token_project(&token_digest("other"), t0)
            .await
            .unwrap(),
        None
    );
    let listed = store.list_tokens(Some(&project("p1"))).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&&forever[..16]) && ids.contains(&&brief[..16]));
    assert!(listed.iter().any(|t| t.expires_at == Some(t0 + secs(60))));
    assert!(
        store
            .list_tokens(Some(&project("p2")))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.delete_token(&forever[..16]).await.unwrap());
    assert!(!store.delete_token(&forever[..16]).await.unwrap());
    assert_eq!(store.find_token_project(&forever, t0).await.unwrap(), None);
}

async fn live_configs(store: &dyn Store) {
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let a = config(
        "p1",
        "cfg-a",
        r#"{"publish_domain": "push.example.com", "app": "live",
            "notify_callback_url": "https://cb.example.com/n", "sign_type": "MD5",
            "key": "0123456789abcdef0123456789abcdef",
            "notify_event_subscription": ["RECORD_OVER", "RECORD_FILE_COMPLETE"]}"#,
        t0,
    );
    store.insert_live_config(&a).await.unwrap();
    let twin = config(
        "p1",
        "cfg-twin",
        r#"{"publish_domain": "push.example.com", "app": "live"}"#,
        t0,
    );
    assert!(matches!(
        store.insert_live_config(&twin).await,
        Err(StoreError::Conflict)
    ));
    // The same domain and app in another project is a different config.
    store
        .insert_live_config(&config(
            "p2",
            "cfg-p2",
            r#"{"publish_domain": "push.example.com", "app": "live"}"#,
            t0,
        ))
        .await
        .unwrap();
    let b = config(
        "p1",
        "cfg-b",
        r#"{"publish_domain": "push.example.com", "app": "*"}"#,
        t0,
    );
    store.insert_live_config(&b).await.unwrap();
    let c = config(
        "p1",
        "cfg-c",
        r#"{"publish_domain": "other.example.com", "app": "live"}"#,
        t0,
    );
    store.insert_live_config(&c).await.unwrap();

    let got = store
        .get_live_config(&project("p1"), "cfg-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.spec.key.as_ref().unwrap().expose(),
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(got.spec.subscription, a.spec.subscription);
    assert_eq!(got.spec.sign_type, a.spec.sign_type);
    assert_eq!(got.spec.notify_callback_url, a.spec.notify_callback_url);
    assert_eq!(got.create_time, t0);
    assert!(
        store
            .get_live_config(&project("p2"), "cfg-a")
            .await
            .unwrap()
            .is_none()
    );

    let all = LiveConfigFilter::default();
    let (total, page) = store
        .list_live_configs(
            &project("p1"),
            &all,
            Page {
                offset: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 3);
    let ids: Vec<_> = page.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["cfg-a", "cfg-b", "cfg-c"]);
    let (total, page) = store
        .list_live_configs(
            &project("p1"),
            &all,
            Page {
                offset: 1,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!((total, page[0].id.as_str()), (3, "cfg-b"));
    let by_domain = LiveConfigFilter {
        publish_domain: Some("push.example.com".into()),
        app: None,
    };
    let (total, _) = store
        .list_live_configs(
            &project("p1"),
            &by_domain,
            Page {
                offset: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 2);
    let by_app = LiveConfigFilter {
        publish_domain: Some("push.example.com".into()),
        app: Some("*".into()),
    };
    let (total, page) = store
        .list_live_configs(
            &project("p1"),
            &by_app,
            Page {
                offset: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!((total, page[0].id.as_str()), (1, "cfg-b"));

    let mut moved = c.clone();
    moved.spec.publish_domain = a.spec.publish_domain.clone();
    moved.spec.app = a.spec.app.clone();
    assert!(matches!(
        store.update_live_config(&moved).await,
        Err(StoreError::Conflict)
    ));
    let mut updated = a.clone();
    updated.spec.key = None;
    updated.update_time = t0 + time::Duration::seconds(5);
    assert!(store.update_live_config(&updated).await.unwrap());
    let got = store
        .get_live_config(&project("p1"), "cfg-a")
        .await
        .unwrap()
        .unwrap();
    assert!(got.spec.key.is_none());
    assert_eq!(
        (got.create_time, got.update_time),
        (t0, updated.update_time)
    );
    let mut foreign = updated.clone();
    foreign.project_id = project("p3");
    assert!(!store.update_live_config(&foreign).await.unwrap());

    assert!(
        !store
            .delete_live_config(&project("p2"), "cfg-a")
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_live_config(&project("p1"), "cfg-a")
            .await
            .unwrap()
    );
    assert!(
        store
            .get_live_config(&project("p1"), "cfg-a")
            .await
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------
// The delivery queue (SPEC §4–§6).
//
// Claims, rescues and queue statistics span every project, so each queue test starts from
// an idle queue (nothing blocked, pending, running or retrying) and [`drain`]s what it
// created before it returns; each also uses its own projects, configs and dates.

/// The queue states in which a delivery still has to go out.
const OPEN_STATES: [&str; 4] = ["blocked", "pending", "running", "retrying"];

/// The lease owner of the tests' ordinary claims.
const WORKER: &str = "worker-1";

/// Every delivery of a project on one page.
const ALL: Page = Page {
    offset: 0,
    limit: 100,
};

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn live_config(project_id: &str, id: &str, body: Value, at: OffsetDateTime) -> LiveCallbackConfig {
    config(project_id, id, &body.to_string(), at)
}

/// Stores the config `body` as `id` of `project_id`, created at `at`.
async fn add_config(
    store: &dyn Store,
    project_id: &str,
    id: &str,
    body: Value,
    at: OffsetDateTime,
) {
    store
        .insert_live_config(&live_config(project_id, id, body, at))
        .await
        .unwrap();
}

/// An event as an engine reports it, with the idempotency key passed beside it.
fn event(
    id: &str,
    event_type: &str,
    domain: &str,
    app: &str,
    stream: &str,
) -> (EventId, LiveEvent) {
    let body = json!({
        "event_type": event_type,
        "publish_domain": domain,
        "app": app,
        "stream": stream,
        "download_url": format!("https://obs.example.com/{id}.mp4"),
        "file_size": 1024,
    });
    (
        EventId::parse("event_id", id).unwrap(),
        LiveEvent::parse("", &body).unwrap(),
    )
}

fn accepted(event_id: &str, deliveries: u32) -> Accepted {
    Accepted {
        event_id: event_id.to_owned(),
        deliveries,
    }
}

fn lease(owner: &str, expires_at: OffsetDateTime) -> Lease {
    Lease {
        owner: owner.to_owned(),
        expires_at,
    }
}

fn endpoint_of(project_id: &str, url: &str) -> String {
    CallbackUrl::parse("url", url, false)
        .unwrap()
        .endpoint(&project(project_id))
}

/// A per-endpoint cap no test reaches unless it means to.
const ROOMY: u32 = 100;
/// The attempts a delivery has in these tests (the default schedule's ten).
const ATTEMPTS: u32 = 10;

/// No project is held back by its share unless a test means it to be.
static NO_PROJECTS: std::sync::LazyLock<HashMap<String, u32>> =
    std::sync::LazyLock::new(HashMap::new);

fn limits(total: usize, per_endpoint: u32, in_flight: &HashMap<String, u32>) -> ClaimLimits<'_> {
    ClaimLimits {
        total,
        per_endpoint,
        in_flight,
        per_project: u32::MAX,
        project_in_flight: &NO_PROJECTS,
        followers: 0,
    }
}

/// Claims up to `total` as [`WORKER`], with nothing in flight and a lease long enough that
/// no test outlives it by accident.
async fn claim(store: &dyn Store, now: OffsetDateTime, total: usize) -> Vec<ClaimedDelivery> {
    claim_within(store, now, limits(total, ROOMY, &HashMap::new())).await
}

/// Claims as [`WORKER`] while `busy` endpoints are at their cap.
async fn claim_skipping(
    store: &dyn Store,
    now: OffsetDateTime,
    total: usize,
    busy: &[String],
) -> Vec<ClaimedDelivery> {
    let in_flight = busy.iter().map(|e| (e.clone(), ROOMY)).collect();
    claim_within(store, now, limits(total, ROOMY, &in_flight)).await
}

async fn claim_within(
    store: &dyn Store,
    now: OffsetDateTime,
    limits: ClaimLimits<'_>,
) -> Vec<ClaimedDelivery> {
    store
        .claim_due_deliveries(now, limits, &lease(WORKER, now + secs(300)))
        .await
        .unwrap()
}

/// A claimed Live delivery's event.
fn live_event(d: &ClaimedDelivery) -> &LiveEvent {
    match &d.notification {
        Notification::Live { event, .. } => event,
        Notification::Rtc { .. } => panic!("{} is not a Live delivery", d.event_id),
    }
}

/// A claimed Live delivery's signing key, as the config had it at acceptance.
fn live_signing(d: &ClaimedDelivery) -> Option<&LiveSigning> {
    match &d.notification {
        Notification::Live { signing, .. } => signing.as_ref(),
        Notification::Rtc { .. } => panic!("{} is not a Live delivery", d.event_id),
    }
}

/// The claimed deliveries' event ids, sorted: a claim's answer order is not a contract.
fn event_ids(claimed: &[ClaimedDelivery]) -> Vec<&str> {
    let mut ids: Vec<_> = claimed.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// A config of project `p` for `url`, on its own domain (the config id's), and one
/// `RECORD_FILE_COMPLETE` event per id accepted at `t0`, each on a stream of its own (the
/// event id).
async fn accept_one_per_stream(
    store: &dyn Store,
    p: &str,
    config_id: &str,
    url: &str,
    ids: &[&str],
    t0: OffsetDateTime,
) {
    let domain = format!("{config_id}.example.com");
    let body = json!({"publish_domain": domain, "app": "*", "notify_callback_url": url});
    add_config(store, p, config_id, body, t0).await;
    let events: Vec<_> = ids
        .iter()
        .map(|id| event(id, "RECORD_FILE_COMPLETE", &domain, "live", id))
        .collect();
    store.ingest_live(&project(p), &events, t0).await.unwrap();
}

fn claimed_one<'a>(claimed: &'a [ClaimedDelivery], event_id: &str) -> &'a ClaimedDelivery {
    let found: Vec<_> = claimed.iter().filter(|d| d.event_id == event_id).collect();
    assert_eq!(found.len(), 1, "claimed {event_id} {} times", found.len());
    found[0]
}

/// An answer from the receiver: 2xx is a success.
fn answer(at: OffsetDateTime, status_code: u16) -> AttemptRecord {
    AttemptRecord {
        at,
        status_code: Some(status_code),
        error: None,
        latency_ms: 25,
        response_head: Some(format!("status {status_code}")),
    }
}

/// The outcome of `d`'s attempt under [`WORKER`]'s lease.
fn outcome(d: &ClaimedDelivery, record: AttemptRecord, next: AfterAttempt) -> Completion {
    Completion {
        delivery_id: d.id,
        attempt: d.attempt,
        lease_owner: WORKER.to_owned(),
        record,
        next,
    }
}

fn succeeded(d: &ClaimedDelivery, at: OffsetDateTime) -> Completion {
    outcome(d, answer(at, 200), AfterAttempt::Succeeded)
}

async fn complete(store: &dyn Store, completions: &[Completion]) -> u64 {
    store
        .complete_deliveries(completions)
        .await
        .unwrap()
        .applied
}

async fn log(
    store: &dyn Store,
    project_id: &str,
    status: Option<DeliveryStatus>,
    event_id: Option<&str>,
    page: Page,
) -> (u64, Vec<DeliveryView>) {
    let filter = DeliveryFilter {
        status,
        event_id: event_id.map(str::to_owned),
    };
    store
        .list_deliveries(&project(project_id), &filter, page)
        .await
        .unwrap()
}

/// The one delivery of a project's event.
async fn delivery_of(store: &dyn Store, project_id: &str, event_id: &str) -> DeliveryView {
    let (total, mut page) = log(store, project_id, None, Some(event_id), ALL).await;
    assert_eq!(total, 1, "deliveries of {project_id}/{event_id}");
    page.remove(0)
}

fn count(stats: &QueueStats, state: &str) -> u64 {
    stats
        .by_state
        .iter()
        .find(|(s, _)| s == state)
        .map_or(0, |(_, n)| *n)
}

async fn assert_idle(store: &dyn Store) {
    let stats = store
        .queue_stats(datetime!(2100-01-01 00:00:00 UTC))
        .await
        .unwrap();
    for state in OPEN_STATES {
        assert_eq!(
            count(&stats, state),
            0,
            "{state} deliveries left in the queue"
        );
    }
    assert_eq!(stats.oldest_due_at, None);
    assert_eq!(
        store
            .next_due_after(OffsetDateTime::UNIX_EPOCH)
            .await
            .unwrap(),
        None
    );
}

/// Fails every delivery due at `at` for good (dead), until none is due.
async fn kill_all_due(store: &dyn Store, at: OffsetDateTime) {
    loop {
        let claimed = claim(store, at, 100).await;
        if claimed.is_empty() {
            return;
        }
        let dead: Vec<_> = claimed
            .iter()
            .map(|d| outcome(d, answer(at, 500), AfterAttempt::Dead))
            .collect();
        complete(store, &dead).await;
    }
}

/// A dead-letter filter of `status` and nothing else.
fn retry_filter(status: DeliveryStatus) -> RetryFilter {
    RetryFilter {
        status,
        publish_domain: None,
        app: None,
        app_id: None,
        since: None,
        until: None,
    }
}

/// Bulk retry (SPEC §6): every dead delivery the filters match is re-queued, oldest first,
/// a stream's deliveries waiting behind each other in their order; a repeat queues nothing;
/// another project's are untouched.
async fn bulk_retry_requeues_matches_once_in_stream_order(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-06 11:00:00 UTC);
    let url = "https://bulk.example.com/cb";
    for (project_id, id) in [("q-bulk", "bulk-cfg"), ("q-bulk-other", "bulk-other-cfg")] {
        add_config(
            store,
            project_id,
            id,
            json!({"publish_domain": "bulk.example.com", "app": "*", "notify_callback_url": url,
                "notify_event_subscription": ["RECORD_OVER"]}),
            t0,
        )
        .await;
    }
    let events = [
        event("b1", "RECORD_OVER", "bulk.example.com", "live", "s1"),
        event("b2", "RECORD_OVER", "bulk.example.com", "live", "s1"),
        event("b3", "RECORD_OVER", "Bulk.Example.com", "other", "s2"),
    ];
    store
        .ingest_live(&project("q-bulk"), &events, t0)
        .await
        .unwrap();
    store
        .ingest_live(&project("q-bulk-other"), &events[..1], t0)
        .await
        .unwrap();
    kill_all_due(store, t0 + secs(1)).await;
    let now = t0 + secs(10);
    let retry = |filter: RetryFilter, project_id: &'static str| async move {
        store
            .retry_matching(&project(project_id), &filter, now)
            .await
            .unwrap()
    };
    let since_later = RetryFilter {
        since: Some(t0 + secs(1)),
        ..retry_filter(DeliveryStatus::Dead)
    };
    assert_eq!(retry(since_later, "q-bulk").await.queued, 0);
    let failed = retry_filter(DeliveryStatus::Failed);
    assert_eq!(retry(failed, "q-bulk").await.queued, 0);
    let other_app = RetryFilter {
        publish_domain: Some("BULK.example.com".into()),
        app: Some("other".into()),
        until: Some(t0 + secs(1)),
        ..retry_filter(DeliveryStatus::Dead)
    };
    let done = retry(other_app, "q-bulk").await;
    assert_eq!((done.queued, done.more), (1, false));
    assert_eq!(
        retry(retry_filter(DeliveryStatus::Dead), "q-bulk")
            .await
            .queued,
        2
    );
    assert_eq!(
        retry(retry_filter(DeliveryStatus::Dead), "q-bulk")
            .await
            .queued,
        0
    );
    assert_eq!(
        delivery_of(store, "q-bulk-other", "b1").await.status,
        DeliveryStatus::Dead
    );
    // s1's second delivery waits for its first.
    let claimed = claim(store, now, 10).await;
    assert_eq!(event_ids(&claimed), ["b1", "b3"]);
    assert!(claim(store, now, 10).await.is_empty());
    complete(store, &[succeeded(claimed_one(&claimed, "b1"), now)]).await;
    assert_eq!(event_ids(&claim(store, now, 10).await), ["b2"]);
    store
        .delete_live_config(&project("q-bulk-other"), "bulk-other-cfg")
        .await
        .unwrap();
    assert_eq!(
        retry(retry_filter(DeliveryStatus::Dead), "q-bulk-other")
            .await
            .queued,
        0,
        "a deleted config's deliveries have nowhere to go"
    );
    drain(store, now + secs(600)).await;
}

/// Replay (SPEC §6): a config added later gets new deliveries of exactly the retained events
/// of the range it matches, with their original ids, in order per stream; another
/// project's config is not found.
async fn replay_sends_the_matching_history_again_in_order(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-06 12:00:00 UTC);
    let old_url = "https://old.example.com/cb";
    add_config(
        store,
        "q-replay",
        "replay-old",
        json!({"publish_domain": "replay.example.com", "app": "*", "notify_callback_url": old_url,
            "notify_event_subscription": ["RECORD_OVER", "RECORD_FILE_COMPLETE"]}),
        t0,
    )
    .await;
    let p = project("q-replay");
    let ingest = |events: Vec<(EventId, LiveEvent)>, at: OffsetDateTime| {
        let p = p.clone();
        async move { store.ingest_live(&p, &events, at).await.unwrap() }
    };
    ingest(
        vec![
            event("r1", "RECORD_OVER", "replay.example.com", "live", "s1"),
            event("r2", "RECORD_OVER", "replay.example.com", "live", "s1"),
            event(
                "r3",
                "RECORD_FILE_COMPLETE",
                "replay.example.com",
                "live",
                "s2",
            ),
            event("r4", "RECORD_OVER", "replay.example.com", "live", "s3"),
        ],
        t0,
    )
    .await;
    ingest(
        vec![event(
            "r5",
            "RECORD_OVER",
            "replay.example.com",
            "live",
            "s1",
        )],
        t0 + secs(100),
    )
    .await;
    drain(store, t0 + secs(200)).await;
    let new_url = "https://new.example.com/cb";
    add_config(
        store,
        "q-replay",
        "replay-new",
        json!({"publish_domain": "replay.example.com", "app": "live", "notify_callback_url": new_url,
            "notify_event_subscription": ["RECORD_OVER"]}),
        t0 + secs(300),
    )
    .await;
    let now = t0 + secs(400);
    let target = ReplayTarget::Live("replay-new".into());
    let replayed = store
        .replay(&p, &target, t0, t0 + secs(50), now)
        .await
        .unwrap();
    assert_eq!(
        replayed,
        Replayed::Queued(3),
        "r1, r2 and r4; not r3's type nor r5's time"
    );
    let elsewhere = store
        .replay(&project("q-replay-other"), &target, t0, now, now)
        .await
        .unwrap();
    assert_eq!(elsewhere, Replayed::NotFound);
    let claimed = claim(store, now, 10).await;
    assert_eq!(
        event_ids(&claimed),
        ["r1", "r4"],
        "r2 waits behind r1 on s1"
    );
    assert!(
        claimed
            .iter()
            .all(|d| d.url == new_url && d.config_id == "replay-new")
    );
    let done: Vec<_> = claimed.iter().map(|d| succeeded(d, now)).collect();
    complete(store, &done).await;
    assert_eq!(event_ids(&claim(store, now, 10).await), ["r2"]);
    drain(store, now + secs(600)).await;
}

/// Finishes every open delivery as succeeded at `at` (later than anything the test
/// scheduled), then checks the queue is idle for the next test.
async fn drain(store: &dyn Store, at: OffsetDateTime) {
    store.rescue_expired_leases(at, at, ATTEMPTS).await.unwrap();
    loop {
        let claimed = store
            .claim_due_deliveries(
                at,
                limits(100, ROOMY, &HashMap::new()),
                &lease("drain", at + secs(60)),
            )
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        let done: Vec<_> = claimed
            .iter()
            .map(|d| Completion {
                lease_owner: "drain".into(),
                ..succeeded(d, at)
            })
            .collect();
        assert_eq!(complete(store, &done).await, claimed.len() as u64);
    }
    assert_idle(store).await;
}

/// Matching (SPEC §1): the exact app's config before the `*` one, the chosen config's
/// subscription and URL decide, another project's configs never match. Idempotency
/// (SPEC §4): a repeated `event_id` (across calls or inside one batch) gets the first
/// answer and creates nothing, while the same id in another project is a new event.
/// Ingests that arrive together (the embedded store commits them together) are each
/// accepted, and an `event_id` sent by two of them at once is accepted once.
async fn concurrent_ingests_are_each_accepted_once(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-01 11:00:00 UTC);
    let domain = "together.example.com";
    add_config(
        store,
        "q-together",
        "tog-config",
        json!({"publish_domain": domain, "app": "*",
               "notify_callback_url": "https://together.example.com/cb"}),
        t0,
    )
    .await;
    let project = project("q-together");
    let ingests = (0..60).map(|i| {
        let one = [event(
            &format!("tog-{}", i % 30),
            "RECORD_FILE_COMPLETE",
            domain,
            "live",
            &format!("s{}", i % 3),
        )];
        let project = &project;
        async move { store.ingest_live(project, &one, t0).await }
    });
    for answer in futures_util::future::join_all(ingests).await {
        let answer = answer.unwrap();
        assert_eq!(answer.len(), 1);
        assert_eq!(answer[0].deliveries, 1, "{}", answer[0].event_id);
    }
    let (total, _) = store
        .list_deliveries(
            &project,
            &DeliveryFilter::default(),
            Page {
                offset: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 30);
    drain(store, t0).await;
}

async fn ingest_matches_and_is_idempotent(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-01 10:00:00 UTC);
    let domain = "ingest.example.com";
    for c in [
        live_config(
            "q-ingest",
            "ing-exact",
            json!({"publish_domain": domain, "app": "live",
                   "notify_callback_url": "https://exact.example.com/cb",
                   "notify_event_subscription": ["RECORD_FILE_COMPLETE", "RECORD_OVER"]}),
            t0,
        ),
        live_config(
            "q-ingest",
            "ing-any",
            json!({"publish_domain": domain, "app": "*",
                   "notify_callback_url": "https://any.example.com/cb",
                   "notify_event_subscription": ["RECORD_FILE_COMPLETE", "RECORD_START"]}),
            t0,
        ),
        // Matches app "silent" but has nowhere to send to.
        live_config(
            "q-ingest",
            "ing-silent",
            json!({"publish_domain": domain, "app": "silent"}),
            t0,
        ),
        live_config(
            "q-ingest-other",
            "ing-foreign-vod",
            json!({"publish_domain": domain, "app": "vod",
                   "notify_callback_url": "https://foreign.example.com/cb"}),
            t0,
        ),
        live_config(
            "q-ingest-other",
            "ing-foreign-lonely",
            json!({"publish_domain": "lonely.example.com", "app": "*",
                   "notify_callback_url": "https://foreign.example.com/cb"}),
            t0,
        ),
    ] {
        store.insert_live_config(&c).await.unwrap();
    }

    let events = [
        event("i-exact", "RECORD_FILE_COMPLETE", domain, "live", "s1"),
        // The exact config does not subscribe; the `*` one (which does) is not consulted.
        event("i-exact-unsubscribed", "RECORD_START", domain, "live", "s1"),
        // Domains match case-insensitively.
        event(
            "i-wildcard",
            "RECORD_FILE_COMPLETE",
            "Ingest.Example.COM",
            "other",
            "s1",
        ),
        event(
            "i-wildcard-unsubscribed",
            "RECORD_OVER",
            domain,
            "other",
            "s1",
        ),
        // No URL on the exact config: nothing, and no fallback to `*`.
        event("i-no-url", "RECORD_FILE_COMPLETE", domain, "silent", "s1"),
        // Another project's exact config for the app does not shadow this project's `*`.
        event("i-foreign-app", "RECORD_FILE_COMPLETE", domain, "vod", "s1"),
        // Only another project has a config for this domain.
        event(
            "i-foreign-domain",
            "RECORD_FILE_COMPLETE",
            "lonely.example.com",
            "live",
            "s1",
        ),
    ];
    let first = store
        .ingest_live(&project("q-ingest"), &events, t0)
        .await
        .unwrap();
    assert_eq!(
        first,
        [
            accepted("i-exact", 1),
            accepted("i-exact-unsubscribed", 0),
            accepted("i-wildcard", 1),
            accepted("i-wildcard-unsubscribed", 0),
            accepted("i-no-url", 0),
            accepted("i-foreign-app", 1),
            accepted("i-foreign-domain", 0),
        ]
    );
    for (event_id, config_id, url) in [
        ("i-exact", "ing-exact", "https://exact.example.com/cb"),
        ("i-wildcard", "ing-any", "https://any.example.com/cb"),
        ("i-foreign-app", "ing-any", "https://any.example.com/cb"),
    ] {
        let d = delivery_of(store, "q-ingest", event_id).await;
        assert_eq!((d.config_id.as_str(), d.url.as_str()), (config_id, url));
        assert_eq!(d.event_type, "RECORD_FILE_COMPLETE");
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.created_at, t0);
        assert!(d.attempts.is_empty());
    }
    assert_eq!(log(store, "q-ingest", None, None, ALL).await.0, 3);
    assert_eq!(log(store, "q-ingest-other", None, None, ALL).await.0, 0);

    // Sent again, even with different content, an event id gets its first answer.
    let again = store
        .ingest_live(
            &project("q-ingest"),
            &[
                event(
                    "i-exact-unsubscribed",
                    "RECORD_FILE_COMPLETE",
                    domain,
                    "live",
                    "s1",
                ),
                event("i-exact", "RECORD_FILE_COMPLETE", domain, "other", "s9"),
            ],
            t0 + secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        [accepted("i-exact-unsubscribed", 0), accepted("i-exact", 1)]
    );
    assert_eq!(log(store, "q-ingest", None, None, ALL).await.0, 3);
    assert_eq!(
        delivery_of(store, "q-ingest", "i-exact").await.config_id,
        "ing-exact"
    );

    // An event id is scoped to its project.
    let foreign = store
        .ingest_live(
            &project("q-ingest-other"),
            &[event(
                "i-foreign-app",
                "RECORD_FILE_COMPLETE",
                domain,
                "vod",
                "s1",
            )],
            t0 + secs(6),
        )
        .await
        .unwrap();
    assert_eq!(foreign, [accepted("i-foreign-app", 1)]);
    assert_eq!(
        delivery_of(store, "q-ingest-other", "i-foreign-app")
            .await
            .config_id,
        "ing-foreign-vod"
    );
    assert_eq!(log(store, "q-ingest", None, None, ALL).await.0, 3);

    // Twice inside one batch: accepted once, both answers alike.
    let batch = [
        event("i-batch", "RECORD_FILE_COMPLETE", domain, "live", "s2"),
        event("i-batch", "RECORD_FILE_COMPLETE", domain, "live", "s2"),
        event("i-batch-2", "RECORD_OVER", domain, "live", "s2"),
    ];
    let expected = [
        accepted("i-batch", 1),
        accepted("i-batch", 1),
        accepted("i-batch-2", 1),
    ];
    let answers = store
        .ingest_live(&project("q-ingest"), &batch, t0 + secs(7))
        .await
        .unwrap();
    assert_eq!(answers, expected);
    assert_eq!(log(store, "q-ingest", None, None, ALL).await.0, 5);
    assert_eq!(
        log(store, "q-ingest", None, Some("i-batch"), ALL).await.0,
        1
    );
    let answers = store
        .ingest_live(&project("q-ingest"), &batch, t0 + secs(8))
        .await
        .unwrap();
    assert_eq!(answers, expected);
    assert_eq!(log(store, "q-ingest", None, None, ALL).await.0, 5);

    drain(store, t0 + Duration::days(1)).await;
}

/// A claim leases due deliveries, oldest due first and up to its limit, each once, as
/// attempt 1, with the URL, endpoint, event and signing a worker needs; it skips busy
/// endpoints and deliveries not yet due.
async fn claim_leases_each_due_delivery_once(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-02 10:00:00 UTC);
    let domain = "claim.example.com";
    let key = "ClaimKeyClaimKeyClaimKeyClaimKey";
    let signed_url = "https://signed.example.com/hook";
    let plain_url = "https://plain.example.com:8443/hook";
    add_config(
        store,
        "q-claim",
        "clm-signed",
        json!({"publish_domain": domain, "app": "signed", "notify_callback_url": signed_url,
                   "sign_type": "MD5", "key": key}),
        t0,
    )
    .await;
    add_config(
        store,
        "q-claim",
        "clm-plain",
        json!({"publish_domain": domain, "app": "plain", "notify_callback_url": plain_url}),
        t0,
    )
    .await;
    let events = [
        (
            t0,
            event("c1", "RECORD_FILE_COMPLETE", domain, "signed", "s1"),
        ),
        (
            t0 + secs(1),
            event("c2", "RECORD_FILE_COMPLETE", domain, "plain", "s1"),
        ),
        (
            t0 + secs(2),
            event("c3", "RECORD_FILE_COMPLETE", domain, "plain", "s2"),
        ),
        (
            t0 + secs(3),
            event("c4", "RECORD_FILE_COMPLETE", domain, "signed", "s2"),
        ),
        (
            t0 + secs(60),
            event("c5", "RECORD_FILE_COMPLETE", domain, "plain", "s3"),
        ),
    ];
    for (at, e) in &events {
        let answers = store
            .ingest_live(&project("q-claim"), std::slice::from_ref(e), *at)
            .await
            .unwrap();
        assert_eq!(answers[0].deliveries, 1);
    }
    let original = |id: &str| &events.iter().find(|(_, e)| e.0.as_str() == id).unwrap().1.1;

    // Nothing is due before it was accepted.
    assert!(claim(store, t0 - secs(1), 10).await.is_empty());

    let now = t0 + secs(10);
    let first = claim(store, now, 1).await;
    assert_eq!(event_ids(&first), ["c1"]);
    let c1 = &first[0];
    assert_eq!(c1.id, delivery_of(store, "q-claim", "c1").await.id);
    assert_eq!(c1.project_id, project("q-claim"));
    assert_eq!(c1.config_id, "clm-signed");
    assert_eq!(c1.url, signed_url);
    assert_eq!(c1.endpoint, endpoint_of("q-claim", signed_url));
    assert_eq!(c1.attempt, 1);
    assert_eq!(live_event(c1), original("c1"));
    let signing = live_signing(c1).expect("a config with a key signs");
    assert_eq!(signing.sign_type, SignType::Md5);
    assert_eq!(signing.key.expose(), key);

    // The signed endpoint is busy: only the plain config's deliveries come out.
    let plain = claim_skipping(store, now, 10, std::slice::from_ref(&c1.endpoint)).await;
    assert_eq!(event_ids(&plain), ["c2", "c3"]);
    for d in &plain {
        assert_eq!(d.config_id, "clm-plain");
        assert_eq!(d.url, plain_url);
        assert_eq!(d.endpoint, endpoint_of("q-claim", plain_url));
        assert_ne!(d.endpoint, c1.endpoint);
        assert_eq!(d.attempt, 1);
        assert!(live_signing(d).is_none());
        assert_eq!(live_event(d), original(&d.event_id));
    }

    let rest = claim(store, now, 10).await;
    assert_eq!(event_ids(&rest), ["c4"]);
    // Everything due is leased; c5 is not due until t0 + 60 s.
    assert!(claim(store, now + secs(30), 10).await.is_empty());
    let late = claim(store, t0 + secs(60), 10).await;
    assert_eq!(event_ids(&late), ["c5"]);

    let all: Vec<_> = [first, plain, rest, late].concat();
    let mut ids: Vec<_> = all.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "a delivery was claimed twice");
    let done: Vec<_> = all.iter().map(|d| succeeded(d, t0 + secs(61))).collect();
    assert_eq!(complete(store, &done).await, 5);
    drain(store, t0 + Duration::days(1)).await;
}

/// Per (config, stream), only the oldest open delivery is ever claimable (SPEC §5 order):
/// the next one waits until it succeeds or dies, not while it waits for a retry; other
/// streams and other configs do not wait.
async fn each_stream_is_delivered_in_acceptance_order(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-03 10:00:00 UTC);
    let domain = "fifo.example.com";
    for (id, app, url) in [
        ("fifo-cfg", "fifo", "https://fifo.example.com/cb"),
        ("fifo-cfg2", "fifo2", "https://fifo2.example.com/cb"),
    ] {
        add_config(
            store,
            "q-fifo",
            id,
            json!({"publish_domain": domain, "app": app, "notify_callback_url": url}),
            t0,
        )
        .await;
    }
    let events = [
        event("a1", "RECORD_FILE_COMPLETE", domain, "fifo", "s"),
        event("a2", "RECORD_FILE_COMPLETE", domain, "fifo", "s"),
        event("a3", "RECORD_FILE_COMPLETE", domain, "fifo", "s"),
        event("a4", "RECORD_FILE_COMPLETE", domain, "fifo", "s"),
        // Another stream of the same config.
        event("b1", "RECORD_FILE_COMPLETE", domain, "fifo", "t"),
        // The same stream name under another config.
        event("x1", "RECORD_FILE_COMPLETE", domain, "fifo2", "s"),
    ];
    for (i, e) in events.iter().enumerate() {
        store
            .ingest_live(
                &project("q-fifo"),
                std::slice::from_ref(e),
                t0 + secs(i as i64),
            )
            .await
            .unwrap();
    }

    let heads = claim(store, t0 + secs(10), 10).await;
    assert_eq!(event_ids(&heads), ["a1", "b1", "x1"]);
    assert!(claim(store, t0 + Duration::hours(1), 10).await.is_empty());
    let (total, waiting) = log(store, "q-fifo", Some(DeliveryStatus::Pending), None, ALL).await;
    assert_eq!(total, 6, "waiting and running deliveries are pending");
    assert!(waiting.iter().all(|d| d.attempts.is_empty()));

    // a1 succeeds: a2 is next, and the store says something came due.
    let a1 = claimed_one(&heads, "a1");
    let recorded = store
        .complete_deliveries(&[succeeded(a1, t0 + secs(11))])
        .await
        .unwrap();
    assert_eq!(
        recorded,
        Recorded {
            applied: 1,
            made_due: true
        }
    );
    let next = claim(store, t0 + secs(12), 10).await;
    assert_eq!(event_ids(&next), ["a2"]);

    // a2 dies: a3 is next all the same.
    let a2 = &next[0];
    let died = outcome(a2, answer(t0 + secs(13), 500), AfterAttempt::Dead);
    assert_eq!(complete(store, &[died]).await, 1);
    let next = claim(store, t0 + secs(14), 10).await;
    assert_eq!(event_ids(&next), ["a3"]);

    // a3 fails and waits for its retry: a4 stays behind it.
    let a3 = &next[0];
    let retry_at = t0 + secs(100);
    let failed = outcome(
        a3,
        answer(t0 + secs(15), 503),
        AfterAttempt::RetryAt(retry_at),
    );
    let recorded = store.complete_deliveries(&[failed]).await.unwrap();
    assert_eq!(
        recorded,
        Recorded {
            applied: 1,
            made_due: false
        },
        "a retry makes nothing due now"
    );
    assert_eq!(
        store.next_due_after(t0 + secs(15)).await.unwrap(),
        Some(retry_at)
    );
    // What is due already is not "next": the worker waits for room, not for it.
    assert_eq!(store.next_due_after(retry_at).await.unwrap(), None);
    assert!(claim(store, t0 + secs(16), 10).await.is_empty());
    assert!(
        claim(store, retry_at - Duration::milliseconds(1), 10)
            .await
            .is_empty()
    );
    let a3_view = delivery_of(store, "q-fifo", "a3").await;
    assert_eq!(a3_view.status, DeliveryStatus::Failed);
    assert_eq!(a3_view.next_attempt_at, Some(retry_at));
    assert_eq!(
        delivery_of(store, "q-fifo", "a4").await.status,
        DeliveryStatus::Pending
    );
    let retried = claim(store, retry_at, 10).await;
    assert_eq!(event_ids(&retried), ["a3"]);
    assert_eq!(retried[0].attempt, 2);
    assert!(claim(store, retry_at + secs(1), 10).await.is_empty());

    // a3 succeeds on its second attempt: a4 is released, as its first attempt.
    assert_eq!(
        complete(store, &[succeeded(&retried[0], retry_at + secs(1))]).await,
        1
    );
    let last = claim(store, retry_at + secs(2), 10).await;
    assert_eq!(event_ids(&last), ["a4"]);
    assert_eq!(last[0].attempt, 1);

    let done = [
        succeeded(&last[0], retry_at + secs(3)),
        succeeded(claimed_one(&heads, "b1"), retry_at + secs(3)),
        succeeded(claimed_one(&heads, "x1"), retry_at + secs(3)),
    ];
    let recorded = store.complete_deliveries(&done).await.unwrap();
    assert_eq!(
        recorded,
        Recorded {
            applied: 3,
            made_due: false
        },
        "the last of their streams"
    );
    drain(store, t0 + Duration::days(1)).await;
}

/// A completion applies only under the lease it was claimed with (same owner, same
/// attempt) and only once; an expired lease is rescued back into the queue, the delivery
/// keeps its place at the head of its stream, and the old worker's late outcome is ignored.
async fn completions_count_only_under_a_live_lease(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-04 10:00:00 UTC);
    let domain = "lease.example.com";
    add_config(
        store,
        "q-lease",
        "lease-cfg",
        json!({"publish_domain": domain, "app": "live",
                   "notify_callback_url": "https://lease.example.com/cb"}),
        t0,
    )
    .await;
    store
        .ingest_live(
            &project("q-lease"),
            &[
                event("g1", "RECORD_FILE_COMPLETE", domain, "live", "s"),
                event("g2", "RECORD_FILE_COMPLETE", domain, "live", "s"),
            ],
            t0,
        )
        .await
        .unwrap();

    let expires = t0 + secs(31);
    let claimed = store
        .claim_due_deliveries(
            t0 + secs(1),
            limits(10, ROOMY, &HashMap::new()),
            &lease("worker-a", expires),
        )
        .await
        .unwrap();
    assert_eq!(event_ids(&claimed), ["g1"]);
    let g1 = &claimed[0];
    let by = |owner: &str, attempt: u32, at: OffsetDateTime| Completion {
        delivery_id: g1.id,
        attempt,
        lease_owner: owner.to_owned(),
        record: answer(at, 200),
        next: AfterAttempt::Succeeded,
    };

    assert_eq!(complete(store, &[by("worker-b", 1, t0 + secs(2))]).await, 0);
    assert_eq!(complete(store, &[by("worker-a", 2, t0 + secs(2))]).await, 0);
    let view = delivery_of(store, "q-lease", "g1").await;
    assert_eq!(view.status, DeliveryStatus::Pending);
    assert!(
        view.attempts.is_empty(),
        "a refused completion left an attempt"
    );

    // The lease still holds: nothing to rescue, nothing to claim.
    assert_eq!(
        store
            .rescue_expired_leases(t0 + secs(30), t0 + secs(30), ATTEMPTS)
            .await
            .unwrap(),
        0
    );
    assert!(claim(store, t0 + secs(30), 10).await.is_empty());

    // worker-a went silent; after its lease expired, g1 goes back to the queue, due now,
    // still ahead of g2.
    let rescued_at = t0 + secs(32);
    assert_eq!(
        store
            .rescue_expired_leases(rescued_at, rescued_at, ATTEMPTS)
            .await
            .unwrap(),
        1
    );
    let again = store
        .claim_due_deliveries(
            rescued_at,
            limits(10, ROOMY, &HashMap::new()),
            &lease("worker-b", rescued_at + secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(event_ids(&again), ["g1"]);
    assert_eq!((again[0].id, again[0].attempt), (g1.id, 2));

    // worker-a's late success is ignored; worker-b's outcome is applied, once.
    let late = by("worker-a", 1, rescued_at + secs(1));
    let current = by("worker-b", 2, rescued_at + secs(2));
    assert_eq!(complete(store, &[late.clone(), current.clone()]).await, 1);
    assert_eq!(complete(store, &[late, current]).await, 0);
    let view = delivery_of(store, "q-lease", "g1").await;
    assert_eq!(view.status, DeliveryStatus::Succeeded);
    // The lost first attempt is logged as an error without an answer, then the success.
    assert_eq!(view.attempts.len(), 2);
    assert_eq!(view.attempts[0].status_code, None);
    assert!(view.attempts[0].error.is_some());
    assert_eq!(view.attempts[1], answer(rescued_at + secs(2), 200));

    let next = claim(store, rescued_at + secs(3), 10).await;
    assert_eq!(event_ids(&next), ["g2"]);
    assert_eq!(
        complete(store, &[succeeded(&next[0], rescued_at + secs(4))]).await,
        1
    );
    drain(store, t0 + Duration::days(1)).await;
}

/// A delivery keeps the URL, endpoint and signing its config had when the event was
/// accepted; deleting the config cancels its deliveries not yet sent, while one already
/// in flight can still be completed.
async fn deliveries_keep_the_config_they_were_accepted_under(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-05 10:00:00 UTC);
    let domain = "change.example.com";
    let (old_url, old_key) = (
        "https://old.example.com/cb",
        "OldKey00OldKey00OldKey00OldKey00",
    );
    let (new_url, new_key) = (
        "https://new.example.com/cb",
        "NewKey11NewKey11NewKey11NewKey11",
    );
    let original = live_config(
        "q-change",
        "chg-cfg",
        json!({"publish_domain": domain, "app": "live", "notify_callback_url": old_url,
               "sign_type": "HMACSHA256", "key": old_key}),
        t0,
    );
    store.insert_live_config(&original).await.unwrap();
    for (i, stream) in ["s1", "s2", "s3"].into_iter().enumerate() {
        let e = event(
            &format!("h{}", i + 1),
            "RECORD_FILE_COMPLETE",
            domain,
            "live",
            stream,
        );
        store
            .ingest_live(&project("q-change"), &[e], t0 + secs(i as i64))
            .await
            .unwrap();
    }

    let mut updated = live_config(
        "q-change",
        "chg-cfg",
        json!({"publish_domain": domain, "app": "live", "notify_callback_url": new_url,
               "sign_type": "MD5", "key": new_key}),
        t0,
    );
    updated.update_time = t0 + secs(5);
    assert!(store.update_live_config(&updated).await.unwrap());
    let h4 = event("h4", "RECORD_FILE_COMPLETE", domain, "live", "s4");
    store
        .ingest_live(&project("q-change"), &[h4], t0 + secs(6))
        .await
        .unwrap();

    for id in ["h1", "h2", "h3"] {
        assert_eq!(delivery_of(store, "q-change", id).await.url, old_url);
    }
    assert_eq!(delivery_of(store, "q-change", "h4").await.url, new_url);

    let now = t0 + secs(10);
    let h1 = claim(store, now, 1).await;
    assert_eq!(event_ids(&h1), ["h1"]);
    let h1 = &h1[0];
    assert_eq!(
        (h1.url.as_str(), h1.endpoint.clone()),
        (old_url, endpoint_of("q-change", old_url))
    );
    let signing = live_signing(h1).unwrap();
    assert_eq!(
        (signing.sign_type, signing.key.expose()),
        (SignType::HmacSha256, old_key)
    );
    // Skipping the old endpoint reaches the delivery accepted after the update.
    let h4 = claim_skipping(store, now, 10, &[endpoint_of("q-change", old_url)]).await;
    assert_eq!(event_ids(&h4), ["h4"]);
    let h4 = &h4[0];
    assert_eq!(
        (h4.url.as_str(), h4.endpoint.clone()),
        (new_url, endpoint_of("q-change", new_url))
    );
    let signing = live_signing(h4).unwrap();
    assert_eq!(
        (signing.sign_type, signing.key.expose()),
        (SignType::Md5, new_key)
    );

    // h1 and h4 are in flight, h2 and h3 not yet sent when the config goes.
    assert!(
        store
            .delete_live_config(&project("q-change"), "chg-cfg")
            .await
            .unwrap()
    );
    let (total, cancelled) = log(
        store,
        "q-change",
        Some(DeliveryStatus::Cancelled),
        None,
        ALL,
    )
    .await;
    assert_eq!(total, 2);
    let mut ids: Vec<_> = cancelled.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["h2", "h3"]);
    assert!(cancelled.iter().all(|d| d.next_attempt_at.is_none()));
    assert!(claim(store, now + secs(1), 10).await.is_empty());
    let h2 = delivery_of(store, "q-change", "h2").await;
    assert_eq!(
        store
            .retry_delivery(&project("q-change"), h2.id, now + secs(2))
            .await
            .unwrap(),
        RetryOutcome::NotRetryable(DeliveryStatus::Cancelled)
    );

    let done = [succeeded(h1, now + secs(3)), succeeded(h4, now + secs(3))];
    assert_eq!(complete(store, &done).await, 2);
    for id in ["h1", "h4"] {
        assert_eq!(
            delivery_of(store, "q-change", id).await.status,
            DeliveryStatus::Succeeded
        );
    }
    // With the config gone, a new event of its domain and app goes nowhere.
    let h5 = event("h5", "RECORD_FILE_COMPLETE", domain, "live", "s1");
    let answers = store
        .ingest_live(&project("q-change"), &[h5], now + secs(4))
        .await
        .unwrap();
    assert_eq!(answers, [accepted("h5", 0)]);
    drain(store, t0 + Duration::days(1)).await;
}

/// The delivery log (SPEC §6): newest first, filtered by status and event id within the
/// project, paged with a total, every attempt recorded in order; manual retry of dead and
/// failed deliveries only, within the project; queue statistics by state.
async fn delivery_log_retry_and_stats(store: &dyn Store) {
    assert_idle(store).await;
    let before = store
        .queue_stats(datetime!(2026-12-06 00:00:00 UTC))
        .await
        .unwrap();
    let t0 = datetime!(2026-12-06 10:00:00 UTC);
    let domain = "log.example.com";
    let url = "https://log.example.com/cb";
    for (project_id, id) in [("q-log", "log-cfg"), ("q-log-other", "log-other-cfg")] {
        add_config(
            store,
            project_id,
            id,
            json!({"publish_domain": domain, "app": "live", "notify_callback_url": url,
                       "notify_event_subscription": ["RECORD_FILE_COMPLETE", "RECORD_OVER"]}),
            t0,
        )
        .await;
    }
    let ingest = |project_id: &'static str,
                  id: &'static str,
                  event_type: &'static str,
                  stream: &'static str,
                  at: OffsetDateTime| async move {
        let e = event(id, event_type, domain, "live", stream);
        let answers = store
            .ingest_live(&project(project_id), &[e], at)
            .await
            .unwrap();
        assert_eq!(answers, [accepted(id, 1)]);
    };
    ingest("q-log", "d1", "RECORD_FILE_COMPLETE", "s1", t0).await;
    ingest("q-log", "d2", "RECORD_FILE_COMPLETE", "s2", t0 + secs(1)).await;
    ingest("q-log", "d3", "RECORD_FILE_COMPLETE", "s3", t0 + secs(2)).await;
    // The same event id in another project.
    ingest(
        "q-log-other",
        "d1",
        "RECORD_FILE_COMPLETE",
        "s1",
        t0 + secs(3),
    )
    .await;

    // d1 fails then succeeds, d2 dies, d3 waits for a retry, the other project's d1 dies.
    let first = claim(store, t0 + secs(10), 10).await;
    assert_eq!(event_ids(&first), ["d1", "d1", "d2", "d3"]);
    let mine = |event_id: &str| {
        first
            .iter()
            .find(|d| d.event_id == event_id && d.project_id == project("q-log"))
            .unwrap()
    };
    let foreign = first
        .iter()
        .find(|d| d.project_id == project("q-log-other"))
        .unwrap();
    let d1_fail = AttemptRecord {
        at: t0 + secs(10),
        status_code: Some(500),
        error: Some("HTTP 500".into()),
        latency_ms: 120,
        response_head: Some("Internal Server Error".into()),
    };
    let d2_refused = AttemptRecord {
        at: t0 + secs(10),
        status_code: None,
        error: Some("connection refused".into()),
        latency_ms: 3,
        response_head: None,
    };
    let d3_retry_at = t0 + secs(300);
    let completions = [
        outcome(
            mine("d1"),
            d1_fail.clone(),
            AfterAttempt::RetryAt(t0 + secs(15)),
        ),
        outcome(mine("d2"), d2_refused.clone(), AfterAttempt::Dead),
        outcome(
            mine("d3"),
            answer(t0 + secs(10), 503),
            AfterAttempt::RetryAt(d3_retry_at),
        ),
        outcome(foreign, d2_refused.clone(), AfterAttempt::Dead),
    ];
    assert_eq!(complete(store, &completions).await, 4);
    let second = claim(store, t0 + secs(15), 10).await;
    assert_eq!(event_ids(&second), ["d1"]);
    assert_eq!(second[0].attempt, 2);
    let d1_ok = AttemptRecord {
        at: datetime!(2026-12-06 10:00:15.250 UTC),
        status_code: Some(200),
        error: None,
        latency_ms: 35,
        response_head: Some("OK".into()),
    };
    let d1_done = outcome(&second[0], d1_ok.clone(), AfterAttempt::Succeeded);
    assert_eq!(complete(store, &[d1_done]).await, 1);
    // d4 is due and never tried; d5 waits behind it.
    ingest("q-log", "d4", "RECORD_OVER", "s4", t0 + secs(20)).await;
    ingest("q-log", "d5", "RECORD_FILE_COMPLETE", "s4", t0 + secs(21)).await;

    // Newest first, with a total.
    let (total, all) = log(store, "q-log", None, None, ALL).await;
    assert_eq!(total, 5);
    let ids: Vec<_> = all.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, ["d5", "d4", "d3", "d2", "d1"]);
    let created: Vec<_> = all.iter().map(|d| d.created_at).collect();
    assert_eq!(
        created,
        [t0 + secs(21), t0 + secs(20), t0 + secs(2), t0 + secs(1), t0]
    );
    assert!(all.iter().all(|d| d.config_id == "log-cfg" && d.url == url));
    assert_eq!(all[1].event_type, "RECORD_OVER");
    assert_eq!(all[2].event_type, "RECORD_FILE_COMPLETE");

    // Pages.
    let page = |offset, limit| Page { offset, limit };
    let (total, window) = log(store, "q-log", None, None, page(1, 2)).await;
    let ids: Vec<_> = window.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!((total, ids), (5, vec!["d4", "d3"]));
    let (total, window) = log(store, "q-log", None, None, page(4, 2)).await;
    let ids: Vec<_> = window.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!((total, ids), (5, vec!["d1"]));
    let (total, window) = log(store, "q-log", None, None, page(5, 2)).await;
    assert_eq!((total, window.len()), (5, 0));

    // By status, each with its attempts in order and its next attempt while open.
    // The event ids with a status, newest first, and the newest such delivery.
    let only = |status| async move {
        let (total, views) = log(store, "q-log", Some(status), None, ALL).await;
        assert_eq!(total as usize, views.len());
        let ids: Vec<String> = views.iter().map(|d| d.event_id.clone()).collect();
        (ids, views.into_iter().next())
    };
    let (ids, d1) = only(DeliveryStatus::Succeeded).await;
    assert_eq!(ids, ["d1"]);
    let d1 = d1.unwrap();
    assert_eq!(d1.attempts, [d1_fail, d1_ok]);
    assert_eq!(d1.next_attempt_at, None);
    let (ids, d2) = only(DeliveryStatus::Dead).await;
    assert_eq!(ids, ["d2"]);
    let d2 = d2.unwrap();
    assert_eq!(d2.attempts, [d2_refused]);
    assert_eq!(d2.next_attempt_at, None);
    let (ids, d3) = only(DeliveryStatus::Failed).await;
    assert_eq!(ids, ["d3"]);
    let d3 = d3.unwrap();
    assert_eq!(d3.attempts, [answer(t0 + secs(10), 503)]);
    assert_eq!(d3.next_attempt_at, Some(d3_retry_at));
    let (ids, d5) = only(DeliveryStatus::Pending).await;
    assert_eq!(ids, ["d5", "d4"]);
    assert!(d5.unwrap().attempts.is_empty());
    let d4 = delivery_of(store, "q-log", "d4").await;
    assert_eq!(d4.next_attempt_at, Some(t0 + secs(20)));
    let (ids, _) = only(DeliveryStatus::Cancelled).await;
    assert!(ids.is_empty());

    // By event id, within the project only, and with a status.
    let (total, views) = log(store, "q-log", None, Some("d1"), ALL).await;
    assert_eq!((total, views[0].id), (1, d1.id));
    let (total, _) = log(
        store,
        "q-log",
        Some(DeliveryStatus::Succeeded),
        Some("d2"),
        ALL,
    )
    .await;
    assert_eq!(total, 0);
    let (total, _) = log(store, "q-log", None, Some("d-unknown"), ALL).await;
    assert_eq!(total, 0);
    let other = delivery_of(store, "q-log-other", "d1").await;
    assert_eq!(other.status, DeliveryStatus::Dead);

    // Queue statistics: the open states are this test's alone (the queue was idle), the
    // finished ones grew by what it finished; d3 is not due yet, d4 is.
    let stats = store.queue_stats(t0 + secs(30)).await.unwrap();
    let open: Vec<_> = OPEN_STATES.iter().map(|s| count(&stats, s)).collect();
    assert_eq!(open, [1, 1, 0, 1], "blocked, pending, running, retrying");
    assert_eq!(count(&stats, "succeeded"), count(&before, "succeeded") + 1);
    assert_eq!(count(&stats, "dead"), count(&before, "dead") + 2);
    assert_eq!(stats.oldest_due_at, Some(t0 + secs(20)));
    assert_eq!(
        store
            .queue_stats(t0 + secs(19))
            .await
            .unwrap()
            .oldest_due_at,
        None
    );

    // Manual retry: dead and failed deliveries only, and only the project's own.
    let retry = |project_id: &'static str, id: i64| async move {
        store
            .retry_delivery(&project(project_id), id, t0 + secs(40))
            .await
            .unwrap()
    };
    assert_eq!(
        retry("q-log", d1.id).await,
        RetryOutcome::NotRetryable(DeliveryStatus::Succeeded)
    );
    assert_eq!(
        retry("q-log", d4.id).await,
        RetryOutcome::NotRetryable(DeliveryStatus::Pending)
    );
    assert_eq!(retry("q-log", other.id).await, RetryOutcome::NotFound);
    assert_eq!(retry("q-log", i64::MAX).await, RetryOutcome::NotFound);
    assert_eq!(
        delivery_of(store, "q-log-other", "d1").await.status,
        DeliveryStatus::Dead
    );
    assert_eq!(retry("q-log", d2.id).await, RetryOutcome::Requeued);
    assert_eq!(retry("q-log", d3.id).await, RetryOutcome::Requeued);
    let d2_view = delivery_of(store, "q-log", "d2").await;
    assert_eq!(d2_view.status, DeliveryStatus::Pending);
    assert_eq!(d2_view.next_attempt_at, Some(t0 + secs(40)));
    assert_eq!(
        delivery_of(store, "q-log", "d3").await.next_attempt_at,
        Some(t0 + secs(40))
    );

    // Both are due now (d3 long before its scheduled retry), as their second attempt.
    let requeued = claim(store, t0 + secs(40), 10).await;
    assert_eq!(event_ids(&requeued), ["d2", "d3", "d4"]);
    for (event_id, attempt) in [("d2", 2), ("d3", 2), ("d4", 1)] {
        assert_eq!(claimed_one(&requeued, event_id).attempt, attempt);
    }
    let done: Vec<_> = requeued
        .iter()
        .map(|d| succeeded(d, t0 + secs(41)))
        .collect();
    assert_eq!(complete(store, &done).await, 3);
    drain(store, t0 + Duration::days(1)).await;
}

/// A claim keeps each endpoint within its room (the per-endpoint cap less what the worker
/// has in flight there), skips full endpoints, and still fills up with other endpoints'
/// due deliveries: a slow endpoint's backlog never crowds out the others.
async fn claims_share_out_endpoint_room(store: &dyn Store) {
    assert_idle(store).await;
    let t0 = datetime!(2026-12-07 10:00:00 UTC);
    let domain = "room.example.com";
    let (slow_url, fast_url) = ("https://slow.example.com/cb", "https://fast.example.com/cb");
    for (id, app, url) in [
        ("room-slow", "slow", slow_url),
        ("room-fast", "fast", fast_url),
    ] {
        add_config(
            store,
            "q-room",
            id,
            json!({"publish_domain": domain, "app": app, "notify_callback_url": url}),
            t0,
        )
        .await;
    }
    // A backlog of 30 at the slow endpoint, one per stream so all are due, oldest first.
    for i in 0..30 {
        let e = event(
            &format!("r{i:02}"),
            "RECORD_FILE_COMPLETE",
            domain,
            "slow",
            &format!("s{i}"),
        );
        store
            .ingest_live(&project("q-room"), &[e], t0 + Duration::milliseconds(i))
            .await
            .unwrap();
    }
    for (i, id) in ["f1", "f2"].into_iter().enumerate() {
        let e = event(id, "RECORD_FILE_COMPLETE", domain, "fast", id);
        store
            .ingest_live(&project("q-room"), &[e], t0 + secs(1 + i as i64))
            .await
            .unwrap();
    }
    let (slow, fast) = (
        endpoint_of("q-room", slow_url),
        endpoint_of("q-room", fast_url),
    );
    let in_flight = |slow_n: u32, fast_n: u32| -> HashMap<String, u32> {
        [(slow.clone(), slow_n), (fast.clone(), fast_n)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    let now = t0 + secs(10);
    let mut claimed = Vec::new();

    // A cap of 2: the slow endpoint's two oldest, and one at the fast endpoint, which
    // already has one in flight.
    let busy = in_flight(0, 1);
    let first = claim_within(store, now, limits(10, 2, &busy)).await;
    assert_eq!(event_ids(&first), ["f1", "r00", "r01"]);
    claimed.extend(first);
    // Both endpoints full: nothing, though deliveries are due at both.
    let busy = in_flight(2, 2);
    assert!(
        claim_within(store, now, limits(10, 2, &busy))
            .await
            .is_empty()
    );
    let busy = in_flight(2, 1);
    let second = claim_within(store, now, limits(10, 2, &busy)).await;
    assert_eq!(event_ids(&second), ["f2"]);
    claimed.extend(second);
    let done: Vec<_> = claimed.iter().map(|d| succeeded(d, now)).collect();
    assert_eq!(complete(store, &done).await, 4);

    // 28 slow deliveries are due before f3. One claim never gives an endpoint more than
    // its room; a backlog longer than the claim's scan window may leave that claim short,
    // but then its endpoint is full and the next claim reaches f3.
    let f3 = event("f3", "RECORD_FILE_COMPLETE", domain, "fast", "f3");
    store
        .ingest_live(&project("q-room"), &[f3], t0 + secs(20))
        .await
        .unwrap();
    let nothing = HashMap::new();
    let third = claim_within(store, t0 + secs(30), limits(3, 2, &nothing)).await;
    let slow_taken = third.iter().filter(|d| d.event_id != "f3").count();
    assert!(slow_taken <= 2, "{:?}", event_ids(&third));
    let mut claimed = third;
    if !event_ids(&claimed).contains(&"f3") {
        let slow_endpoint = claimed[0].endpoint.clone();
        let full = HashMap::from([(slow_endpoint, 2)]);
        let fourth = claim_within(store, t0 + secs(30), limits(3, 2, &full)).await;
        assert_eq!(
            event_ids(&fourth),
            ["f3"],
            "a full endpoint's backlog kept a due delivery to another endpoint waiting"
        );
        claimed.extend(fourth);
    }
    let done: Vec<_> = claimed
        .iter()
        .map(|d| succeeded(d, t0 + secs(31)))
        .collect();
    assert_eq!(complete(store, &done).await, claimed.len() as u64);
    drain(store, t0 + Duration::days(1)).await;
}

/// Once its config is deleted, a delivery in flight is cancelled rather than retried or
/// rescued, and a dead one cannot be retried by hand.
async fn a_deleted_configs_deliveries_are_never_sent_again(store: &dyn Store) {
    let t0 = datetime!(2031-01-01 00:00:00 UTC);
    let p = "q-deleted";
    for (id, domain) in [
        ("cfg-deleted-1", "one.example.com"),
        ("cfg-deleted-2", "two.example.com"),
    ] {
        let body = json!({"publish_domain": domain, "app": "*", "notify_callback_url": "https://cb.example.com/n",
            "notify_event_subscription": ["RECORD_FILE_COMPLETE"]});
        add_config(store, p, id, body, t0).await;
    }
    let events = [
        event(
            "d1",
            "RECORD_FILE_COMPLETE",
            "one.example.com",
            "live",
            "s1",
        ),
        event(
            "d2",
            "RECORD_FILE_COMPLETE",
            "one.example.com",
            "live",
            "s1",
        ),
        event(
            "d3",
            "RECORD_FILE_COMPLETE",
            "one.example.com",
            "live",
            "s2",
        ),
        event(
            "d4",
            "RECORD_FILE_COMPLETE",
            "two.example.com",
            "live",
            "s1",
        ),
    ];
    store.ingest_live(&project(p), &events, t0).await.unwrap();
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["d1", "d3", "d4"]);
    let dead = outcome(
        claimed_one(&claimed, "d4"),
        answer(t0, 500),
        AfterAttempt::Dead,
    );
    assert_eq!(complete(store, &[dead]).await, 1);
    for id in ["cfg-deleted-1", "cfg-deleted-2"] {
        assert!(store.delete_live_config(&project(p), id).await.unwrap());
    }
    assert_eq!(
        delivery_of(store, p, "d2").await.status,
        DeliveryStatus::Cancelled
    );
    let retry = outcome(
        claimed_one(&claimed, "d1"),
        answer(t0, 503),
        AfterAttempt::RetryAt(t0 + secs(5)),
    );
    assert_eq!(complete(store, &[retry]).await, 1);
    assert_eq!(
        delivery_of(store, p, "d1").await.status,
        DeliveryStatus::Cancelled
    );
    // d3's worker died: its lease expires and the rescue cancels it instead of re-queueing it.
    assert_eq!(
        store
            .rescue_expired_leases(t0 + secs(301), t0 + secs(301), ATTEMPTS)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        delivery_of(store, p, "d3").await.status,
        DeliveryStatus::Cancelled
    );
    let d4 = delivery_of(store, p, "d4").await;
    assert_eq!(d4.status, DeliveryStatus::Dead);
    assert_eq!(
        store
            .retry_delivery(&project(p), d4.id, t0 + secs(400))
            .await
            .unwrap(),
        RetryOutcome::ConfigDeleted
    );
    assert_idle(store).await;
}

/// A node that knows its predecessor died takes leases back before they expire, and the
/// rescued deliveries are due at once, not when the leases would have expired.
async fn an_early_rescue_requeues_due_now(store: &dyn Store) {
    let t0 = datetime!(2032-01-01 00:00:00 UTC);
    let p = "q-early-rescue";
    let body = json!({"publish_domain": "early.example.com", "app": "*", "notify_callback_url": "https://cb.example.com/n",
        "notify_event_subscription": ["RECORD_FILE_COMPLETE"]});
    add_config(store, p, "cfg-early", body, t0).await;
    let events = [event(
        "r1",
        "RECORD_FILE_COMPLETE",
        "early.example.com",
        "live",
        "s",
    )];
    store.ingest_live(&project(p), &events, t0).await.unwrap();
    assert_eq!(event_ids(&claim(store, t0, 10).await), ["r1"]);
    let now = t0 + secs(1);
    assert_eq!(
        store
            .rescue_expired_leases(t0 + secs(1000), now, ATTEMPTS)
            .await
            .unwrap(),
        1
    );
    let again = claim(store, now, 10).await;
    assert_eq!((event_ids(&again), again[0].attempt), (vec!["r1"], 2));
    assert_eq!(complete(store, &[succeeded(&again[0], now)]).await, 1);
    assert_idle(store).await;
}

/// A delivery whose worker keeps dying (the lease expires every time) ends after the
/// schedule's attempts, like any other: the rescuer counts the lost attempts and makes the
/// last one dead, and the stream moves on.
async fn the_rescuer_honours_the_attempt_limit(store: &dyn Store) {
    let t0 = datetime!(2033-01-01 00:00:00 UTC);
    let p = "q-rescue-limit";
    let body = json!({"publish_domain": "limit.example.com", "app": "*", "notify_callback_url": "https://cb.example.com/l",
        "notify_event_subscription": ["RECORD_FILE_COMPLETE"]});
    add_config(store, p, "cfg-limit", body, t0).await;
    let events = [
        event(
            "k1",
            "RECORD_FILE_COMPLETE",
            "limit.example.com",
            "live",
            "s",
        ),
        event(
            "k2",
            "RECORD_FILE_COMPLETE",
            "limit.example.com",
            "live",
            "s",
        ),
    ];
    store.ingest_live(&project(p), &events, t0).await.unwrap();
    let max_attempts = 2;
    let mut now = t0;
    for attempt in 1..=max_attempts {
        let claimed = claim(store, now, 10).await;
        assert_eq!(
            (event_ids(&claimed), claimed[0].attempt),
            (vec!["k1"], attempt)
        );
        // The worker dies; the lease (300 s) runs out.
        now += secs(301);
        assert_eq!(
            store
                .rescue_expired_leases(now, now, max_attempts)
                .await
                .unwrap(),
            1
        );
    }
    let k1 = delivery_of(store, p, "k1").await;
    assert_eq!(k1.status, DeliveryStatus::Dead);
    assert_eq!(k1.attempts.len(), 2);
    assert!(k1.attempts.iter().all(|a| {
        a.error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired"))
    }));
    let next = claim(store, now, 10).await;
    assert_eq!(event_ids(&next), ["k2"]);
    assert_eq!(complete(store, &[succeeded(&next[0], now)]).await, 1);
    assert_idle(store).await;
}

/// A claimed row that cannot be decoded (a corrupt payload, a key sealed for another
/// config) can never be sent: its delivery ends as dead with the reason in its attempt,
/// the other deliveries of the claim go out, and its stream moves on.
async fn an_unreadable_delivery_is_dead_and_the_claim_goes_on(
    store: &dyn Store,
    behind: &Behind<'_>,
) {
    let t0 = datetime!(2034-01-01 00:00:00 UTC);
    let p = "q-poison";
    for (id, app) in [("cfg-poison-a", "live"), ("cfg-poison-b", "other")] {
        let body = json!({"publish_domain": "poison.example.com", "app": app,
            "notify_callback_url": "https://cb.example.com/p", "key": "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"});
        add_config(store, p, id, body, t0).await;
    }
    let events = [
        event(
            "fine",
            "RECORD_FILE_COMPLETE",
            "poison.example.com",
            "live",
            "s1",
        ),
        event(
            "bad-payload",
            "RECORD_FILE_COMPLETE",
            "poison.example.com",
            "live",
            "s2",
        ),
        event(
            "after-bad",
            "RECORD_FILE_COMPLETE",
            "poison.example.com",
            "live",
            "s2",
        ),
        event(
            "bad-key",
            "RECORD_FILE_COMPLETE",
            "poison.example.com",
            "other",
            "s3",
        ),
    ];
    store.ingest_live(&project(p), &events, t0).await.unwrap();
    behind
        .execute("UPDATE events SET payload = 'not json' WHERE event_id = 'bad-payload'")
        .await;
    behind
        .execute(
            "UPDATE deliveries SET key_sealed = (SELECT key_sealed FROM live_callback_configs \
             WHERE id = 'cfg-poison-a') WHERE config_id = 'cfg-poison-b'",
        )
        .await;
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["fine"]);
    for id in ["bad-payload", "bad-key"] {
        let view = delivery_of(store, p, id).await;
        assert_eq!(view.status, DeliveryStatus::Dead, "{id}");
        let error = view.attempts[0].error.clone().unwrap_or_default();
        assert!(error.starts_with("cannot be sent: "), "{id}: {error}");
    }
    let next = claim(store, t0 + secs(1), 10).await;
    assert_eq!(event_ids(&next), ["after-bad"]);
    let done = [
        succeeded(&claimed[0], t0),
        succeeded(&next[0], t0 + secs(1)),
    ];
    assert_eq!(complete(store, &done).await, 2);
    assert_idle(store).await;
}

/// Marking an unreadable row dead is a write, and a write can fail: that leaves the row
/// leased for a later claim to try again, and the claim hands out the rest all the same.
/// (Before, the whole claim failed, and its readable deliveries sat leased until their
/// leases expired.) A trigger refuses the write here, as a full disk or a lost connection
/// would.
async fn a_claim_goes_on_when_an_unreadable_row_cannot_be_marked_dead(
    store: &dyn Store,
    behind: &Behind<'_>,
) {
    let t0 = datetime!(2034-06-01 00:00:00 UTC);
    let p = "q-poison-stuck";
    accept_one_per_stream(
        store,
        p,
        "cfg-poison-stuck",
        "https://cb.example.com/s",
        &["readable", "unreadable"],
        t0,
    )
    .await;
    behind
        .execute("UPDATE events SET payload = 'not json' WHERE event_id = 'unreadable'")
        .await;
    let refuse = match behind {
        Behind::Sqlite(..) => vec![
            "CREATE TRIGGER refuse_dead BEFORE UPDATE ON deliveries WHEN NEW.state = 'dead' \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
        ],
        Behind::Postgres(_) => vec![
            "CREATE FUNCTION refuse_dead() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$",
            "CREATE TRIGGER refuse_dead BEFORE UPDATE ON deliveries FOR EACH ROW \
             WHEN (NEW.state = 'dead') EXECUTE FUNCTION refuse_dead()",
        ],
    };
    for sql in refuse {
        behind.execute(sql).await;
    }
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["readable"]);
    assert_eq!(
        delivery_of(store, p, "unreadable").await.status,
        DeliveryStatus::Pending
    );
    behind
        .execute(match behind {
            Behind::Sqlite(..) => "DROP TRIGGER refuse_dead",
            Behind::Postgres(_) => "DROP TRIGGER refuse_dead ON deliveries",
        })
        .await;
    assert_eq!(complete(store, &[succeeded(&claimed[0], t0)]).await, 1);
    // Its lease expires; the rescue logs the lost attempt and the next claim ends it.
    drain(store, t0 + secs(600)).await;
    let view = delivery_of(store, p, "unreadable").await;
    assert_eq!(view.status, DeliveryStatus::Dead);
    let error = view
        .attempts
        .last()
        .unwrap()
        .error
        .clone()
        .unwrap_or_default();
    assert!(error.starts_with("cannot be sent: "), "{error}");
}

/// A claim may lease a delivery that a config's deletion cancels at the same moment (the
/// embedded store's claim reads the row, the cancellation commits, then the claim leases
/// it). The outcome of that lease must not turn the cancelled delivery into a sent one:
/// completion (and the rescue of a lease whose worker died) applies only to rows still in
/// the state the lease left them in. The rows are cancelled here behind the store's back,
/// as the cancellation that raced the claim leaves them.
async fn a_cancelled_delivery_stays_cancelled_whatever_its_lease_brings(
    store: &dyn Store,
    behind: &Behind<'_>,
) {
    let t0 = datetime!(2030-01-01 00:00:00 UTC);
    let p = "q-cancel-race";
    accept_one_per_stream(
        store,
        p,
        "cfg-cancel-race",
        "https://cb.example.com/r",
        &["raced", "raced-lost"],
        t0,
    )
    .await;
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["raced", "raced-lost"]);
    behind
        .execute(
            "UPDATE deliveries SET state = 'cancelled', lease_owner = NULL, lease_expires_at_ms = NULL \
             WHERE config_id = 'cfg-cancel-race'",
        )
        .await;
    let raced = claimed_one(&claimed, "raced");
    assert_eq!(complete(store, &[succeeded(raced, t0)]).await, 0);
    // The other one's worker died: the rescue of its expired lease leaves it cancelled
    // too, rather than re-queueing it.
    assert_eq!(
        store
            .rescue_expired_leases(t0 + secs(301), t0 + secs(301), ATTEMPTS)
            .await
            .unwrap(),
        0
    );
    for id in ["raced", "raced-lost"] {
        let view = delivery_of(store, p, id).await;
        assert_eq!(view.status, DeliveryStatus::Cancelled, "{id}");
        assert!(view.attempts.is_empty(), "{id}: {:?}", view.attempts);
    }
    // The leases ended: nothing is in flight or due.
    assert_idle(store).await;
    assert_eq!(
        store
            .delete_finished_events(t0 + secs(1), 100)
            .await
            .unwrap(),
        2
    );
}

/// Retention picks its events once and deletes by that list: a delivery reopened (a
/// manual retry) between its look at the queue and its deletes keeps its event and its
/// attempts, and nothing open is deleted. On PostgreSQL the reopening transaction holds
/// the delivery's row while retention runs; it commits once retention waits for it (the
/// old statements did, after deleting the attempts) or retention is done (it skips the
/// held row now). On SQLite writers take turns, so retention sees the reopening whole.
async fn retention_keeps_a_delivery_reopened_while_it_runs(store: &dyn Store, behind: &Behind<'_>) {
    let t0 = datetime!(2030-01-01 00:00:00 UTC);
    let p = "q-reopened";
    accept_one_per_stream(
        store,
        p,
        "cfg-reopened",
        "https://cb.example.com/o",
        &["first", "reopened", "last"],
        t0,
    )
    .await;
    let claimed = claim(store, t0, 10).await;
    let outcomes = [
        succeeded(claimed_one(&claimed, "first"), t0),
        outcome(
            claimed_one(&claimed, "reopened"),
            answer(t0, 500),
            AfterAttempt::Dead,
        ),
        succeeded(claimed_one(&claimed, "last"), t0),
    ];
    assert_eq!(complete(store, &outcomes).await, 3);
    let reopened = delivery_of(store, p, "reopened").await;
    let mut held = Some(
        behind
            .begin(&format!(
                "UPDATE deliveries SET state = 'pending' WHERE id = {}",
                reopened.id
            ))
            .await,
    );
    let retention = store.delete_finished_events(t0 + secs(1), 100);
    tokio::pin!(retention);
    let deleted = loop {
        let Some(tx) = held.as_ref() else {
            break retention.await.unwrap();
        };
        tokio::select! {
            deleted = &mut retention => break deleted.unwrap(),
            () = tx.until_another_waits() => {}
        }
        held.take().unwrap().commit().await;
    };
    if let Some(tx) = held {
        tx.commit().await;
    }
    assert_eq!(deleted, 2);
    let view = delivery_of(store, p, "reopened").await;
    assert_eq!(view.status, DeliveryStatus::Pending);
    assert_eq!(view.attempts.len(), 1, "its attempt was deleted");
    drain(store, t0 + secs(10)).await;
    assert_eq!(
        store
            .delete_finished_events(t0 + secs(1), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(log(store, p, None, None, ALL).await.0, 0);
}

/// Retention (SPEC §6): events accepted before the cut whose deliveries are all finished
/// go, with their deliveries and attempts, in batches of the size asked; an open delivery
/// keeps its event; a deleted event's id can be used again.
async fn retention_deletes_only_finished_history(store: &dyn Store) {
    let t0 = datetime!(2031-01-01 00:00:00 UTC);
    let p = "q-retention";
    let body = json!({"publish_domain": "keep.example.com", "app": "live", "notify_callback_url": "https://cb.example.com/k"});
    add_config(store, p, "cfg-keep", body, t0).await;
    let old = [
        event(
            "old-done",
            "RECORD_FILE_COMPLETE",
            "keep.example.com",
            "live",
            "a",
        ),
        event(
            "old-open",
            "RECORD_FILE_COMPLETE",
            "keep.example.com",
            "live",
            "b",
        ),
        event(
            "old-none",
            "RECORD_FILE_COMPLETE",
            "keep.example.com",
            "unmatched",
            "c",
        ),
    ];
    store.ingest_live(&project(p), &old, t0).await.unwrap();
    let claimed = claim(store, t0, 10).await;
    assert_eq!(event_ids(&claimed), ["old-done", "old-open"]);
    let done = claimed_one(&claimed, "old-done");
    let open = claimed_one(&claimed, "old-open");
    let outcomes = [
        succeeded(done, t0),
        outcome(
            open,
            answer(t0, 503),
            AfterAttempt::RetryAt(t0 + secs(1000)),
        ),
    ];
    assert_eq!(complete(store, &outcomes).await, 2);
    let new = [event(
        "new-done",
        "RECORD_FILE_COMPLETE",
        "keep.example.com",
        "live",
        "d",
    )];
    store
        .ingest_live(&project(p), &new, t0 + secs(100))
        .await
        .unwrap();
    let claimed = claim(store, t0 + secs(100), 10).await;
    assert_eq!(
        complete(store, &[succeeded(&claimed[0], t0 + secs(100))]).await,
        1
    );

    let cut = t0 + secs(50);
    assert_eq!(store.delete_finished_events(cut, 1).await.unwrap(), 1);
    assert_eq!(store.delete_finished_events(cut, 1000).await.unwrap(), 1);
    assert_eq!(store.delete_finished_events(cut, 1000).await.unwrap(), 0);
    let (total, listed) = log(store, p, None, None, ALL).await;
    let mut ids: Vec<&str> = listed.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!((total, ids), (2, vec!["new-done", "old-open"]));
    assert_eq!(delivery_of(store, p, "old-open").await.attempts.len(), 1);

    // A deleted event's id is no longer an idempotency key: it is accepted anew.
    let again = store
        .ingest_live(&project(p), &old[..1], t0 + secs(200))
        .await
        .unwrap();
    assert_eq!(again, [accepted("old-done", 1)]);
    drain(store, t0 + secs(5000)).await;
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    run_suite(&store).await;
}

/// The embedded store leases a due delivery's followers, the next deliveries of its stream
/// in order, and keeps the stream's order whatever their outcomes: a follower that fails
/// right after the one before it succeeded (in one batch) holds the rest back; followers
/// handed back unsent are due again in their turn, not before.
#[tokio::test]
async fn sqlite_leases_each_streams_next_deliveries_behind_its_due_one() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    let store: &dyn Store = &store;
    let t0 = datetime!(2026-12-06 10:00:00 UTC);
    let domain = "chain.example.com";
    add_config(
        store,
        "q-chain",
        "chain-cfg",
        json!({"publish_domain": domain, "app": "chain", "notify_callback_url": "https://chain.example.com/cb"}),
        t0,
    )
    .await;
    let events: Vec<_> = ["a1", "a2", "a3", "a4", "a5", "b1"]
        .iter()
        .map(|id| {
            let stream = if id.starts_with('a') { "s" } else { "t" };
            event(id, "RECORD_FILE_COMPLETE", domain, "chain", stream)
        })
        .collect();
    store
        .ingest_live(&project("q-chain"), &events, t0)
        .await
        .unwrap();
    let with_followers = |n| ClaimLimits {
        followers: n,
        ..limits(100, ROOMY, &NO_PROJECTS)
    };
    let chain_of = |d: &ClaimedDelivery| -> Vec<String> {
        std::iter::once(d)
            .chain(&d.followers)
            .map(|d| d.event_id.clone())
            .collect()
    };

    let heads = claim_within(store, t0 + secs(1), with_followers(3)).await;
    assert_eq!(event_ids(&heads), ["a1", "b1"]);
    let a1 = claimed_one(&heads, "a1");
    assert_eq!(chain_of(a1), ["a1", "a2", "a3", "a4"]);
    assert!(claimed_one(&heads, "b1").followers.is_empty());
    assert!(a1.followers.iter().all(|f| f.attempt == 1));
    // Leased: neither the stream's head nor its followers are claimed again.
    assert_eq!(
        event_ids(&claim_within(store, t0 + secs(1), with_followers(3)).await),
        Vec::<&str>::new()
    );

    // a1 and a2 succeed, a3 fails, a4 is handed back unsent, all in one batch: a4 and a5
    // wait behind a3's retry.
    let [a2, a3, a4] = [0, 1, 2].map(|i| &a1.followers[i]);
    let retry_at = t0 + secs(100);
    let batch = [
        succeeded(a1, t0 + secs(2)),
        succeeded(a2, t0 + secs(2)),
        outcome(
            a3,
            answer(t0 + secs(2), 503),
            AfterAttempt::RetryAt(retry_at),
        ),
        Completion::not_sent(a4, WORKER, t0 + secs(2)),
    ];
    assert_eq!(
        complete(store, &batch).await,
        3,
        "a not-sent follower is no attempt"
    );
    assert!(
        claim_within(store, t0 + secs(3), with_followers(3))
            .await
            .is_empty(),
        "nothing of stream s is due before a3's retry"
    );
    assert!(
        delivery_of(store, "q-chain", "a4")
            .await
            .attempts
            .is_empty()
    );

    // At a3's retry: a3 again, with a4 and a5 behind it. a3 succeeds and the two are handed
    // back (their lease had no time left): a4 is due, a5 still waits behind it.
    let next = claim_within(store, retry_at, with_followers(3)).await;
    assert_eq!(
        next.iter().map(chain_of).collect::<Vec<_>>(),
        [["a3", "a4", "a5"]]
    );
    assert_eq!(next[0].attempt, 2);
    let (a4, a5) = (&next[0].followers[0], &next[0].followers[1]);
    let batch = [
        succeeded(&next[0], retry_at),
        Completion::not_sent(a4, WORKER, retry_at),
        Completion::not_sent(a5, WORKER, retry_at),
    ];
    assert_eq!(complete(store, &batch).await, 1);
    let a4 = claim_within(store, retry_at, with_followers(0)).await;
    assert_eq!(event_ids(&a4), ["a4"]);
    assert!(
        delivery_of(store, "q-chain", "a4")
            .await
            .attempts
            .is_empty()
    );
    // Any leased delivery may be handed back unsent.
    let back = [Completion::not_sent(&a4[0], WORKER, retry_at)];
    assert_eq!(complete(store, &back).await, 0);

    // A config's deletion cancels its followers as every delivery not yet sent, and ends
    // their leases so that they are not sent; the due delivery in flight is recorded.
    let next = claim_within(store, retry_at + secs(2), with_followers(3)).await;
    assert_eq!(
        next.iter().map(chain_of).collect::<Vec<_>>(),
        [["a4", "a5"]]
    );
    let a5 = &next[0].followers[0];
    assert!(store.follower_lease_holds(a5, WORKER));
    assert!(
        store
            .delete_live_config(&project("q-chain"), "chain-cfg")
            .await
            .unwrap()
    );
    assert!(!store.follower_lease_holds(a5, WORKER));
    assert_eq!(
        delivery_of(store, "q-chain", "a5").await.status,
        DeliveryStatus::Cancelled
    );
    let batch = [
        succeeded(claimed_one(&heads, "b1"), retry_at),
        succeeded(&next[0], retry_at),
        Completion::not_sent(a5, WORKER, retry_at),
    ];
    assert_eq!(complete(store, &batch).await, 2);
    assert_eq!(
        delivery_of(store, "q-chain", "a4").await.status,
        DeliveryStatus::Succeeded
    );
    assert_idle(store).await;
}

#[tokio::test]
async fn sqlite_survives_poison_and_forgets_history() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    run_hardening_suite(&store, &Behind::Sqlite(dir.path().to_owned(), &store)).await;
}

/// Stores a secret key, a signing key and a bucket's secret access key, and returns them:
/// what must not be found in plaintext afterwards.
async fn store_secrets(store: &dyn Store) -> [&'static str; 3] {
    let secret = "PLAINTEXTSECRETKEYPLAINTEXTSECRETKEY0000";
    store
        .insert_access_key(&AccessKey {
            access_key: "AKPLAINTEXTCHECK0001".into(),
            project_id: project("p1"),
            secret_key: SecretString::from(secret),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    let sign_key = "SIGNKEYSIGNKEYSIGNKEYSIGNKEY0000";
    let body = format!(r#"{{"publish_domain": "d.example.com", "app": "a", "key": "{sign_key}"}}"#);
    store
        .insert_live_config(&config("p1", "cfg", &body, OffsetDateTime::now_utc()))
        .await
        .unwrap();
    let storage_secret = "STORAGESECRETSTORAGESECRET0000";
    let body = format!(
        r#"{{"engine": "srs", "publish_domain": "d.example.com", "record_dir": "/rec/secret",
            "storage": {{"endpoint": "https://obs.example.com", "region": "r", "bucket": "b-1",
            "access_key_id": "AK", "secret_access_key": "{storage_secret}"}}}}"#
    );
    store
        .insert_source(&herald_core::source::RecordingSource {
            id: herald_core::source::RecordingSource::new_id(),
            project_id: project("p1"),
            spec: herald_core::source::SourceSpec::parse(body.as_bytes()).unwrap(),
            secret: SecretString::from("hooksecret-secrets-0123456789abcdef"),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    [secret, sign_key, storage_secret]
}

#[tokio::test]
async fn sqlite_keeps_no_secret_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    let secrets = store_secrets(&store).await;
    drop(store);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(DATABASE_FILE)
        {
            bytes.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(!bytes.is_empty());
    for needle in secrets {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} found on disk"
        );
    }
}

/// Opened with another master key, the embedded store refuses to start, as PostgreSQL
/// does, instead of failing later on every secret it reads; its own key still opens it.
#[tokio::test]
async fn sqlite_refuses_to_open_under_another_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let (master, hex) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    store
        .insert_access_key(&AccessKey {
            access_key: "AKWRONGMASTERKEY0001".into(),
            project_id: project("p1"),
            secret_key: SecretString::from("s".repeat(40)),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    drop(store);
    let (other, _) = MasterKey::generate();
    assert!(matches!(
        SqliteStore::open(dir.path(), other).await,
        Err(StoreError::MasterKeyMismatch)
    ));
    let same = MasterKey::from_hex(hex.expose_secret()).unwrap();
    let store = SqliteStore::open(dir.path(), same).await.unwrap();
    assert!(store.find_access_key("AKWRONGMASTERKEY0001").await.is_ok());
}

/// A database from before the check holds no check value: its key is tried on a secret it
/// already has, so a wrong key is refused rather than recorded as the right one.
#[tokio::test]
async fn sqlite_from_before_the_check_refuses_another_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    store
        .insert_access_key(&AccessKey {
            access_key: "AKOLDDATABASE0000001".into(),
            project_id: project("p1"),
            secret_key: SecretString::from("s".repeat(40)),
            created_at: OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    drop(store);
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}",
        dir.path().join(DATABASE_FILE).display()
    ))
    .await
    .unwrap();
    sqlx::query("DELETE FROM herald_meta")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (other, _) = MasterKey::generate();
    assert!(matches!(
        SqliteStore::open(dir.path(), other).await,
        Err(StoreError::MasterKeyMismatch)
    ));
}

/// A fresh PostgreSQL store, or `None` (the test skips) without `HERALD_TEST_DATABASE_URL`.
async fn postgres(master: MasterKey) -> Option<(PgStore, TestSchema)> {
    let schema = TestSchema::create().await?;
    let store = PgStore::open(&schema.settings(4), master).await.unwrap();
    Some((store, schema))
}

/// Two stores on one fresh schema with one master key, as two nodes would be.
async fn two_postgres_nodes() -> Option<([std::sync::Arc<dyn Store>; 2], TestSchema)> {
    let (master, hex) = MasterKey::generate();
    let (first, schema) = postgres(master).await?;
    let second = PgStore::open(
        &schema.settings(4),
        MasterKey::from_hex(hex.expose_secret()).unwrap(),
    )
    .await
    .unwrap();
    Some((
        [std::sync::Arc::new(first), std::sync::Arc::new(second)],
        schema,
    ))
}

#[tokio::test]
async fn postgres_conforms() {
    let (master, _) = MasterKey::generate();
    let Some((store, _schema)) = postgres(master).await else {
        return;
    };
    run_suite(&store).await;
}

#[tokio::test]
async fn postgres_survives_poison_and_forgets_history() {
    let (master, _) = MasterKey::generate();
    let Some((store, schema)) = postgres(master).await else {
        return;
    };
    run_hardening_suite(&store, &Behind::Postgres(schema.url.clone())).await;
}

#[tokio::test]
async fn postgres_keeps_no_secret_in_plaintext() {
    let (master, _) = MasterKey::generate();
    let Some((store, schema)) = postgres(master).await else {
        return;
    };
    let secrets = store_secrets(&store).await;
    // Every row of every table in the schema, as text (bytea as hex, and as escaped bytes).
    let pool = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.contains(&"access_keys".to_owned()));
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT convert_from(convert_to(t::text, 'UTF8'), 'UTF8') FROM {table} t"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        dump.extend(rows);
    }
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for needle in secrets {
        assert!(!dump.contains(needle), "{needle} stored in plaintext");
        assert!(
            !dump.contains(&hex(needle)),
            "{needle} stored in plaintext (bytea)"
        );
    }
}

#[tokio::test]
async fn postgres_refuses_to_open_under_another_master_key() {
    let (master, hex) = MasterKey::generate();
    let Some((store, schema)) = postgres(master).await else {
        return;
    };
    drop(store);
    let (other, _) = MasterKey::generate();
    assert!(matches!(
        PgStore::open(&schema.settings(2), other).await,
        Err(StoreError::MasterKeyMismatch)
    ));
    let same = MasterKey::from_hex(hex.expose_secret()).unwrap();
    PgStore::open(&schema.settings(2), same).await.unwrap();
}

/// Two nodes on one database, each ingesting (some event ids on both at once) and working
/// the queue concurrently: every event is accepted once, every delivery is sent once, no
/// stream ever has two deliveries out at once across the nodes, and each stream goes out
/// in acceptance order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_share_the_queue_and_keep_each_stream_in_order() {
    use std::sync::{Arc, Mutex};
    // Small batches over more streams than a batch has events, walked in a different
    // order by each node: a stream is often idle when an event for it comes, and both
    // nodes often write to one stream at once (the races that per-stream order must win).
    const STREAMS: usize = 24;
    const BATCHES: usize = 150;
    const PER_BATCH: usize = 6;
    let Some((nodes, _schema)) = two_postgres_nodes().await else {
        return;
    };
    let now = OffsetDateTime::now_utc();
    nodes[0]
        .insert_live_config(&live_config(
            "p1",
            "cfg",
            json!({"publish_domain": "d.example.com", "app": "*",
                   "notify_callback_url": "https://hooks.example.com/cb"}),
            now,
        ))
        .await
        .unwrap();

    // Each node's batches: its own ids, plus ids both nodes send (a client retrying on
    // another node). Per stream, a node's own events are in its acceptance order.
    let batch = |node: usize, b: usize| -> Vec<(EventId, LiveEvent)> {
        (0..PER_BATCH)
            .map(|i| {
                let n = b * PER_BATCH + i;
                // Shared ids make the second node wait for the first one's commit, so
                // only a few batches have one.
                let id = if i == 0 && b.is_multiple_of(8) {
                    format!("both-{n}")
                } else {
                    format!("n{node}-{n:05}")
                };
                event(
                    &id,
                    "RECORD_FILE_COMPLETE",
                    "d.example.com",
                    "live",
                    &format!("s{}", (n * (5 + 2 * node)) % STREAMS),
                )
            })
            .collect()
    };
    let ingest = |node: usize| {
        let store = nodes[node].clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for b in 0..BATCHES {
                let events = batch(node, b);
                answers.extend(
                    store
                        .ingest_live(&project("p1"), &events, OffsetDateTime::now_utc())
                        .await
                        .unwrap(),
                );
            }
            answers
        })
    };
    let ingests = [ingest(0), ingest(1)];

    // Workers: claim, check nobody else holds the stream, note the order, complete.
    let out: Arc<Mutex<HashMap<String, String>>> = Arc::default(); // stream -> holder
    let sent: Arc<Mutex<Vec<(String, i64, String)>>> = Arc::default(); // (stream, id, event)
    let expected = 2 * BATCHES * PER_BATCH - BATCHES.div_ceil(8);
    let work = |node: usize| {
        let (store, out, sent) = (nodes[node].clone(), out.clone(), sent.clone());
        tokio::spawn(async move {
            let owner = format!("node{node}");
            while sent.lock().unwrap().len() < expected {
                let at = OffsetDateTime::now_utc();
                let claimed = store
                    .claim_due_deliveries(
                        at,
                        limits(16, ROOMY, &HashMap::new()),
                        &lease(&owner, at + secs(600)),
                    )
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                for d in &claimed {
                    let stream = live_event(d).stream.clone();
                    if let Some(holder) = out.lock().unwrap().insert(stream.clone(), owner.clone())
                    {
                        panic!(
                            "{owner} claimed {} of {stream} while {holder} had one out",
                            d.event_id
                        );
                    }
                    sent.lock()
                        .unwrap()
                        .push((stream, d.id, d.event_id.clone()));
                }
                for d in &claimed {
                    out.lock().unwrap().remove(&live_event(d).stream);
                }
                let done: Vec<_> = claimed
                    .iter()
                    .map(|d| Completion {
                        lease_owner: owner.clone(),
                        ..succeeded(d, at)
                    })
                    .collect();
                assert_eq!(complete(store.as_ref(), &done).await, claimed.len() as u64);
            }
        })
    };
    let workers = [work(0), work(1)];
    let mut answers = Vec::new();
    for i in ingests {
        answers.push(i.await.unwrap());
    }
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await
    .expect("the nodes did not deliver every event");

    // Both nodes' answers to a shared id agree, and it was accepted once.
    for (a, b) in answers[0].iter().zip(&answers[1]) {
        if a.event_id.starts_with("both-") {
            assert_eq!(a, b);
        }
        assert_eq!(a.deliveries, 1);
    }
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), expected);
    let unique: std::collections::HashSet<&str> = sent.iter().map(|(_, _, e)| e.as_str()).collect();
    assert_eq!(unique.len(), expected, "a delivery was sent twice");
    for s in 0..STREAMS {
        let stream = format!("s{s}");
        let of_stream: Vec<&(String, i64, String)> =
            sent.iter().filter(|(st, _, _)| *st == stream).collect();
        assert!(
            of_stream.windows(2).all(|w| w[0].1 < w[1].1),
            "{stream} went out of acceptance order"
        );
        for node in ["n0-", "n1-"] {
            let mine: Vec<&str> = of_stream
                .iter()
                .map(|(_, _, e)| e.as_str())
                .filter(|e| e.starts_with(node))
                .collect();
            let mut sorted = mine.clone();
            sorted.sort_unstable();
            assert_eq!(mine, sorted, "{node} events of {stream} out of order");
        }
    }
    assert_idle(nodes[1].as_ref()).await;
}

/// Managed PostgreSQL services usually require TLS: the store connects with
/// `sslmode=require` (skipped where the test server has TLS off).
#[tokio::test]
async fn postgres_connects_over_tls() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let admin = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&admin)
        .await
        .unwrap();
    if ssl != "on" {
        eprintln!("the test server has ssl = {ssl}: TLS test skipped");
        return;
    }
    let mut settings = schema.settings(2);
    settings.url = SecretString::from(format!("{}&sslmode=require", schema.url));
    let (master, _) = MasterKey::generate();
    let store = PgStore::open(&settings, master).await.unwrap();
    store.ping().await.unwrap();
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'herald' AND s.ssl",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(encrypted > 0, "no connection of the store is encrypted");
}

/// A failed attempt recorded on one node while another deletes the config: however the two
/// interleave, the delivery ends cancelled, never waiting to be retried to a config that
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_retry_racing_a_config_deletion_is_cancelled() {
    let Some(([worker, admin], _schema)) = two_postgres_nodes().await else {
        return;
    };
    for round in 0..40 {
        let now = OffsetDateTime::now_utc();
        let id = format!("cfg{round}");
        add_config(
            admin.as_ref(),
            "p1",
            &id,
            json!({"publish_domain": format!("d{round}.example.com"), "app": "*",
                       "notify_callback_url": "https://hooks.example.com/cb"}),
            now,
        )
        .await;
        let ev = event(
            &format!("e{round}"),
            "RECORD_FILE_COMPLETE",
            &format!("d{round}.example.com"),
            "live",
            "s",
        );
        worker
            .ingest_live(&project("p1"), &[ev], now)
            .await
            .unwrap();
        let claimed = worker
            .claim_due_deliveries(
                now,
                limits(10, ROOMY, &HashMap::new()),
                &lease(WORKER, now + secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let retry = outcome(
            &claimed[0],
            answer(now, 500),
            AfterAttempt::RetryAt(now + secs(1)),
        );
        let (w, a, cfg) = (worker.clone(), admin.clone(), id.clone());
        let completing =
            tokio::spawn(async move { w.complete_deliveries(&[retry]).await.unwrap().applied });
        let deleting =
            tokio::spawn(async move { a.delete_live_config(&project("p1"), &cfg).await.unwrap() });
        assert_eq!(completing.await.unwrap(), 1);
        assert!(deleting.await.unwrap());
        let d = delivery_of(admin.as_ref(), "p1", &format!("e{round}")).await;
        assert_eq!(d.status, DeliveryStatus::Cancelled, "round {round}");
    }
}
