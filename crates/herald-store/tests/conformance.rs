//! One behaviour suite for every store backend. Each backend's test opens a fresh store
//! and hands it to [`run_suite`]; the PostgreSQL backend will add its own opener here.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_core::live::{LiveCallbackConfig, LiveConfigRequest};
use herald_core::project::ProjectId;
use herald_core::secrets::{MasterKey, token_digest};
use herald_store::sqlite::{DATABASE_FILE, SqliteStore};
use herald_store::{AccessKey, LiveConfigFilter, Page, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::macros::datetime;

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

async fn tokens(store: &dyn Store) {
    let digest = token_digest("herald_token");
    store
        .insert_token(&digest, &project("p1"), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(
        store.find_token_project(&digest).await.unwrap(),
        Some(project("p1"))
    );
    assert_eq!(
        store
            .find_token_project(&token_digest("other"))
            .await
            .unwrap(),
        None
    );
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

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
    run_suite(&store).await;
}

#[tokio::test]
async fn sqlite_keeps_no_secret_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
    let store = SqliteStore::open(dir.path(), master).await.unwrap();
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
    for needle in [secret, sign_key] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} found on disk"
        );
    }
}

#[tokio::test]
async fn sqlite_refuses_secrets_under_another_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = MasterKey::generate();
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
    let store = SqliteStore::open(dir.path(), other).await.unwrap();
    assert!(matches!(
        store.find_access_key("AKWRONGMASTERKEY0001").await,
        Err(StoreError::Sealing(_))
    ));
}
