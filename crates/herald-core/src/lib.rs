//! Herald's domain core: everything that decides, nothing that does I/O.
//!
//! Where to look:
//! - [`event`]: recording events as engines report them, validated ([`event::live`],
//!   [`event::rtc`]).
//! - [`config`]: callback configs validated ([`config::live`], [`config::rtc`], and the
//!   [`config::callback_url`] rules they share).
//! - [`matching`]: which config an accepted event is delivered to.
//! - [`notification`]: the notification bodies config owners receive.
//! - [`signing`]: every outbound signature (Live `auth_sign`, RTC `X-Rtc-*`).
//! - [`sdk_auth`]: the inbound `SDK-HMAC-SHA256` request signature of the Huawei Cloud SDKs.
//! - [`mac`]: the HMAC helper the two signature modules share.
//! - [`retry`]: the retry schedule and its jitter.
//! - [`duration`]: durations as settings and fields write them (`5s`, `30d`).
//! - [`field`]: reading untrusted JSON field by field, so each refusal names the field and
//!   the rule.
//! - [`project`]: project ids, the tenant boundary of every resource.
//! - [`source`]: recording sources: a media server, its record dir and hook URL.
//! - [`storage`]: where a source keeps its recordings: format, bucket, object keys.
//! - [`hook`]: what a media server's hook says, read per engine.
//! - [`recording`]: recording sessions: where a hook becomes recording events.
//! - [`secrets`]: the master key that seals secrets at rest, and credential generation.
//! - [`target`]: which callback target addresses are private and refused by default.
//! - [`timefmt`]: the UTC timestamp formats of the documented APIs.
#![forbid(unsafe_code)]

pub mod config;
pub mod duration;
pub mod event;
pub mod field;
pub mod hook;
pub mod mac;
pub mod matching;
pub mod notification;
pub mod project;
pub mod recording;
pub mod retry;
pub mod sdk_auth;
pub mod secrets;
pub mod signing;
pub mod source;
pub mod storage;
pub mod target;
pub mod timefmt;
