//! Conversions between stored rows and domain types, shared by every backend.
//!
//! Stored values are parsed back through the same domain parsers that guard the API, so
//! a row that was altered outside Herald surfaces as [`CorruptRow`], not as a wrong answer.

use herald_core::live::{
    AppSelector, CallbackUrl, LiveCallbackConfig, LiveConfigSpec, PublishDomain, SignKey, SignType,
    Subscription,
};
use herald_core::project::ProjectId;
use herald_core::secrets::{MasterKey, SealError};
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;

use crate::StoreError;

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
        let field = |e: herald_core::field::FieldError| corrupt(e.to_string());
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
