//! Conversions between stored rows and domain types, shared by every backend.
//!
//! Stored values are parsed back through the same domain parsers that guard the API, so
//! a row that was altered outside Herald surfaces as [`CorruptRow`], not as a wrong answer.

use std::collections::HashMap;

use herald_core::config::callback_url::CallbackUrl;
use herald_core::config::live::{
    AppSelector, LiveCallbackConfig, LiveConfigSpec, PublishDomain, SignKey, SignType, Subscription,
};
use herald_core::config::rtc::{AppId, AppName, AuthKey, RtcSubscription};
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::field::FieldError;
use herald_core::matching::MatchCandidate;
use herald_core::project::ProjectId;
use herald_core::secrets::{MasterKey, SealError};
use herald_core::signing::LiveSigning;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::{
    AfterAttempt, AttemptRecord, ClaimedDelivery, Completion, DeliveryQueue, DeliveryState,
    DeliveryView, Notification, RecordCallback, RtcApp, StoreError,
};

#[derive(Debug, thiserror::Error)]
#[error("stored row {table}/{id} is invalid: {reason}")]
pub struct CorruptRow {
    pub table: &'static str,
    pub id: String,
    pub reason: String,
}

/// Associated data binding a sealed secret key to its access key.
pub(crate) fn access_key_context(access_key: &str) -> String {
    format!("access_key:{access_key}")
}

/// Associated data binding a sealed signing key to its config. Deliveries copy the
/// config's ciphertext as it was at acceptance and open it with the same context.
pub(crate) fn live_config_key_context(id: &str) -> String {
    format!("live_callback_config:{id}")
}

/// Associated data binding a sealed RTC auth key to its app.
pub(crate) fn rtc_app_key_context(app_id: &str) -> String {
    format!("rtc_app:{app_id}")
}

/// A `live_callback_configs` row as both backends read and write it.
#[derive(sqlx::FromRow)]
pub(crate) struct LiveConfigRow {
    pub id: String,
    pub project_id: String,
    pub publish_domain: String,
    pub app: String,
    pub notify_callback_url: Option<String>,
    pub notify_event_subscription: String,
    pub sign_type: String,
    pub key_sealed: Option<Vec<u8>>,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

impl LiveConfigRow {
    pub fn from_config(config: &LiveCallbackConfig, master: &MasterKey) -> Result<Self, SealError> {
        let spec = &config.spec;
        let key_sealed = spec
            .key
            .as_ref()
            .map(|k| master.seal(&live_config_key_context(&config.id), k.expose().as_bytes()))
            .transpose()?;
        Ok(Self {
            id: config.id.clone(),
            project_id: config.project_id.as_str().to_owned(),
            publish_domain: spec.publish_domain.as_str().to_owned(),
            app: spec.app.as_str().to_owned(),
            notify_callback_url: spec
                .notify_callback_url
                .as_ref()
                .map(|u| u.as_str().to_owned()),
            notify_event_subscription: spec.subscription.names().join(","),
            sign_type: spec.sign_type.as_str().to_owned(),
            key_sealed,
            create_time_ms: unix_ms(config.create_time),
            update_time_ms: unix_ms(config.update_time),
        })
    }

    pub fn into_config(self, master: &MasterKey) -> Result<LiveCallbackConfig, StoreError> {
        let corrupt = |reason: String| CorruptRow {
            table: "live_callback_configs",
            id: self.id.clone(),
            reason,
        };
        let field = |e: FieldError| corrupt(e.to_string());
        let key = match &self.key_sealed {
            None => None,
            Some(sealed) => {
                let key = master.open_string(&live_config_key_context(&self.id), sealed)?;
                Some(SignKey::parse("key", key.expose_secret()).map_err(field)?)
            }
        };
        let names: Vec<&str> = self.notify_event_subscription.split(',').collect();
        let spec = LiveConfigSpec {
            publish_domain: PublishDomain::parse("publish_domain", &self.publish_domain)
                .map_err(field)?,
            app: AppSelector::parse("app", &self.app).map_err(field)?,
            // Stored URLs passed the target check when they were written (or the operator
            // allowed private targets then); the send-time check guards delivery.
            notify_callback_url: self
                .notify_callback_url
                .as_deref()
                .map(|u| CallbackUrl::parse("notify_callback_url", u, true))
                .transpose()
                .map_err(field)?,
            subscription: Subscription::parse("notify_event_subscription", &names)
                .map_err(field)?,
            sign_type: SignType::parse("sign_type", &self.sign_type).map_err(field)?,
            key,
        };
        Ok(LiveCallbackConfig {
            project_id: ProjectId::parse("project_id", &self.project_id).map_err(field)?,
            id: self.id,
            spec,
            create_time: from_unix_ms(self.create_time_ms),
            update_time: from_unix_ms(self.update_time_ms),
        })
    }
}

/// Reads a stored project id, which was validated when it was written.
pub(crate) fn stored_project(
    table: &'static str,
    id: &str,
    raw: &str,
) -> Result<ProjectId, CorruptRow> {
    ProjectId::parse("project_id", raw).map_err(|e| CorruptRow {
        table,
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn corrupt(table: &'static str, id: impl ToString, reason: impl ToString) -> CorruptRow {
    CorruptRow {
        table,
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

/// An `rtc_apps` row as both backends read it.
#[derive(sqlx::FromRow)]
pub(crate) struct RtcAppRow {
    pub app_id: String,
    pub project_id: String,
    pub app_name: String,
    pub created_at_ms: i64,
    pub callback_url: Option<String>,
    pub auth_key_sealed: Option<Vec<u8>>,
    pub notify_event_subscription: Option<String>,
    pub callback_updated_at_ms: i64,
}

/// The columns of [`RtcAppRow`], for `SELECT`.
pub(crate) const RTC_APP_COLUMNS: &str = "app_id, project_id, app_name, created_at_ms, callback_url, \
     auth_key_sealed, notify_event_subscription, callback_updated_at_ms";

/// A record callback's subscription as `rtc_apps.notify_event_subscription` stores it:
/// event type names joined by ','; NULL (apps from before it could be chosen) is all three.
pub(crate) fn stored_rtc_subscription(raw: Option<&str>) -> Result<RtcSubscription, FieldError> {
    match raw {
        None => Ok(RtcSubscription::default()),
        Some(joined) => {
            let names: Vec<&str> = joined.split(',').collect();
            RtcSubscription::parse("notify_event_subscription", &names)
        }
    }
}

impl RtcAppRow {
    pub fn into_app(self, master: &MasterKey) -> Result<RtcApp, StoreError> {
        let bad = |reason: String| corrupt("rtc_apps", &self.app_id, reason);
        let callback = match &self.callback_url {
            None => None,
            Some(url) => {
                let auth_key = self
                    .auth_key_sealed
                    .as_ref()
                    .map(|sealed| {
                        let key = master.open_string(&rtc_app_key_context(&self.app_id), sealed)?;
                        AuthKey::parse("auth_key", key.expose_secret())
                            .map_err(|e| StoreError::from(bad(e.to_string())))
                    })
                    .transpose()?;
                Some(RecordCallback {
                    url: CallbackUrl::parse("url", url, true).map_err(|e| bad(e.to_string()))?,
                    auth_key,
                    subscription: stored_rtc_subscription(
                        self.notify_event_subscription.as_deref(),
                    )
                    .map_err(|e| bad(e.to_string()))?,
                })
            }
        };
        Ok(RtcApp {
            app_id: AppId::parse(&self.app_id).ok_or_else(|| bad("not an app id".into()))?,
            project_id: stored_project("rtc_apps", &self.app_id, &self.project_id)?,
            app_name: AppName::parse("app_name", &self.app_name).map_err(|e| bad(e.to_string()))?,
            created_at: from_unix_ms(self.created_at_ms),
            callback,
            callback_updated_at: from_unix_ms(self.callback_updated_at_ms),
        })
    }
}

/// A config and its URL, as a delivery targets it: `(config or app id, URL)`.
pub(crate) type Target = (String, String);

/// A Live config read as a match candidate for an event.
#[derive(sqlx::FromRow)]
pub(crate) struct CandidateRow {
    pub id: String,
    pub app: String,
    pub notify_event_subscription: String,
    pub notify_callback_url: Option<String>,
}

impl CandidateRow {
    pub fn into_candidate(self) -> Result<MatchCandidate<Target>, CorruptRow> {
        let bad = |e: FieldError| corrupt("live_callback_configs", &self.id, e);
        let names: Vec<&str> = self.notify_event_subscription.split(',').collect();
        Ok(MatchCandidate {
            app: AppSelector::parse("app", &self.app).map_err(bad)?,
            subscription: Subscription::parse("notify_event_subscription", &names).map_err(bad)?,
            has_url: self.notify_callback_url.is_some(),
            target: (
                self.id.clone(),
                self.notify_callback_url.clone().unwrap_or_default(),
            ),
        })
    }
}

/// A leased delivery joined with its event, as both backends read it after a claim: a row
/// on PostgreSQL; on SQLite one JSON array per delivery, its columns in this order and the
/// key in hex (JSON has no bytes), which serde reads into the struct field by field.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(crate) struct ClaimedRow {
    pub id: i64,
    pub project_id: String,
    pub event_id: String,
    pub payload: String,
    pub flavour: String,
    pub config_id: String,
    pub endpoint: String,
    pub url: String,
    pub sign_type: String,
    #[serde(deserialize_with = "hex_key")]
    pub key_sealed: Option<Vec<u8>>,
    pub attempts: i64,
}

fn hex_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d)?
        .map(hex::decode)
        .transpose()
        .map_err(serde::de::Error::custom)
}

impl ClaimedRow {
    pub fn into_claimed(self, master: &MasterKey) -> Result<ClaimedDelivery, StoreError> {
        let id = self.id;
        let bad_event = |e: &dyn std::fmt::Display| corrupt("events", &self.event_id, e);
        let payload: serde_json::Value =
            serde_json::from_str(&self.payload).map_err(|e| bad_event(&e))?;
        let open_key = |context: String| {
            self.key_sealed
                .as_ref()
                .map(|sealed| master.open_string(&context, sealed))
                .transpose()
        };
        let notification = if self.flavour == "rtc" {
            let auth_key = open_key(rtc_app_key_context(&self.config_id))?
                .map(|key| AuthKey::parse("auth_key", key.expose_secret()))
                .transpose()
                .map_err(|e| corrupt("deliveries", id, e))?;
            Notification::Rtc {
                event: RtcEvent::parse("", &payload).map_err(|e| bad_event(&e))?,
                app_id: self.config_id.clone(),
                auth_key,
            }
        } else {
            let sign_type = SignType::parse("sign_type", &self.sign_type)
                .map_err(|e| corrupt("deliveries", id, e))?;
            let signing = open_key(live_config_key_context(&self.config_id))?
                .map(|key| SignKey::parse("key", key.expose_secret()))
                .transpose()
                .map_err(|e| corrupt("deliveries", id, e))?
                .map(|key| LiveSigning { sign_type, key });
            Notification::Live {
                event: LiveEvent::parse("", &payload).map_err(|e| bad_event(&e))?,
                signing,
            }
        };
        Ok(ClaimedDelivery {
            id,
            project_id: stored_project("deliveries", &id.to_string(), &self.project_id)?,
            event_id: self.event_id,
            config_id: self.config_id,
            endpoint: self.endpoint,
            url: self.url,
            attempt: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            notification,
            followers: Vec::new(),
        })
    }
}

/// Turns leased rows into deliveries to send. A row that cannot be read back (a key sealed
/// under another master key, a corrupt payload) can never be sent: rather than fail the
/// claim, and with it every claim after it, the row's delivery is ended (`dead`, the reason
/// in its attempt) and the others go out. When even that write fails, only those rows wait:
/// they stay leased, and the rescuer hands them to a later claim, which tries again.
pub(crate) async fn finish_claim(
    store: &(dyn DeliveryQueue + Sync),
    rows: Vec<ClaimedRow>,
    master: &MasterKey,
    lease_owner: &str,
    now: OffsetDateTime,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let mut claimed = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        let (id, attempts) = (row.id, row.attempts);
        match row.into_claimed(master) {
            Ok(delivery) => claimed.push(delivery),
            Err(e) => {
                tracing::error!(delivery_id = id, error = %e, "a claimed delivery cannot be read: it is dead");
                unreadable.push(Completion {
                    delivery_id: id,
                    attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                    lease_owner: lease_owner.to_owned(),
                    record: AttemptRecord {
                        at: now,
                        status_code: None,
                        error: Some(format!("cannot be sent: {e}")),
                        latency_ms: 0,
                        response_head: None,
                    },
                    next: AfterAttempt::Dead,
                });
            }
        }
    }
    if !unreadable.is_empty()
        && let Err(e) = store.complete_deliveries(&unreadable).await
    {
        let ids: Vec<i64> = unreadable.iter().map(|c| c.delivery_id).collect();
        tracing::error!(delivery_ids = ?ids, error = %e, "marking unreadable deliveries dead failed: they are tried again when their lease expires");
    }
    Ok(claimed)
}

/// A delivery as the log lists it, before its attempts are attached.
#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub config_id: String,
    pub url: String,
    /// The event as stored; the log shows its `event_type`. Read here rather than in SQL,
    /// so that one unreadable payload shows as an empty type instead of failing the page.
    pub payload: String,
    pub state: String,
    pub created_at_ms: i64,
    pub next_attempt_at_ms: i64,
    /// The successful attempt, kept in the row rather than in `delivery_attempts`.
    pub success_at_ms: Option<i64>,
    pub success_status_code: Option<i64>,
    pub success_latency_ms: Option<i64>,
    pub success_response_head: Option<String>,
}

/// The columns of [`DeliveryRow`], for a `SELECT` from `deliveries d JOIN events e`.
pub(crate) const DELIVERY_ROW_COLUMNS: &str = "d.id, e.event_id, d.config_id, d.url, e.payload, \
     d.state, d.created_at_ms, d.next_attempt_at_ms, \
     d.success_at_ms, d.success_status_code, d.success_latency_ms, d.success_response_head";

/// One row of `delivery_attempts`.
#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub delivery_id: i64,
    pub at_ms: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response_head: Option<String>,
}

/// A stored `deliveries.state` read back: an unknown name is a corrupt row, never a guess.
pub(crate) fn stored_state(id: i64, raw: &str) -> Result<DeliveryState, CorruptRow> {
    DeliveryState::parse(raw).map_err(|e| corrupt("deliveries", id, e))
}

/// An attempt as stored, in `delivery_attempts` or (a success) in its delivery's row.
fn attempt_record(
    at_ms: i64,
    status_code: Option<i64>,
    error: Option<String>,
    latency_ms: i64,
    response_head: Option<String>,
) -> AttemptRecord {
    AttemptRecord {
        at: from_unix_ms(at_ms),
        status_code: status_code.and_then(|c| u16::try_from(c).ok()),
        error,
        latency_ms: u64::try_from(latency_ms).unwrap_or(0),
        response_head,
    }
}

/// The log's page of deliveries, each with its attempts (given in attempt order), its
/// success (kept in its row) last.
pub(crate) fn delivery_views(
    rows: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
) -> Result<Vec<DeliveryView>, CorruptRow> {
    let mut by_delivery: HashMap<i64, Vec<AttemptRecord>> = HashMap::new();
    for a in attempts {
        by_delivery
            .entry(a.delivery_id)
            .or_default()
            .push(attempt_record(
                a.at_ms,
                a.status_code,
                a.error,
                a.latency_ms,
                a.response_head,
            ));
    }
    rows.into_iter()
        .map(|row| {
            let state = stored_state(row.id, &row.state)?;
            let mut attempts = by_delivery.remove(&row.id).unwrap_or_default();
            if let Some(at_ms) = row.success_at_ms {
                attempts.push(attempt_record(
                    at_ms,
                    row.success_status_code,
                    None,
                    row.success_latency_ms.unwrap_or(0),
                    row.success_response_head,
                ));
            }
            let open = !state.is_finished();
            Ok(DeliveryView {
                id: row.id,
                event_id: row.event_id,
                config_id: row.config_id,
                url: row.url,
                event_type: serde_json::from_str::<serde_json::Value>(&row.payload)
                    .ok()
                    .and_then(|p| p.get("event_type")?.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                created_at: from_unix_ms(row.created_at_ms),
                next_attempt_at: open.then(|| from_unix_ms(row.next_attempt_at_ms)),
                attempts,
                status: state.status(),
            })
        })
        .collect()
}
