//! Herald's domain core: everything that decides, nothing that does I/O.
//!
//! - [`event`]: recording events as engines report them, validated.
//! - [`hook`]: what a media server's hook says, read per engine.
//! - [`field`]: reading untrusted JSON field by field, so each refusal names the field and the rule.
//! - [`live`]: the Live-flavour callback configuration and its validated parts.
//! - [`notify`]: rendering and signing the notifications config owners receive.
//! - [`project`]: project ids, the tenant boundary of every resource.
//! - [`rtc`]: the RTC flavour: apps, record callbacks, the `X-Rtc-*` signature.
//! - [`recording`]: recording sessions: where a hook becomes recording events.
//! - [`retry`]: the retry schedule and its jitter.
//! - [`sdk_auth`]: the `SDK-HMAC-SHA256` request signature of the Huawei Cloud SDKs.
//! - [`secrets`]: the master key that seals secrets at rest, and credential generation.
//! - [`source`]: recording sources: a media server, its record dir and hook URL.
//! - [`target`]: which callback target addresses are private and refused by default.
//! - [`timefmt`]: the UTC timestamp formats of the documented APIs.
#![forbid(unsafe_code)]

pub mod event;
pub mod field;
pub mod hook;
pub mod live;
pub mod notify;
pub mod project;
pub mod recording;
pub mod retry;
pub mod rtc;
pub mod sdk_auth;
pub mod secrets;
pub mod source;
pub mod target;
pub mod timefmt;
