//! Herald's domain core: everything that decides, nothing that does I/O.
//!
//! - [`field`]: reading untrusted JSON field by field, so each refusal names the field and the rule.
//! - [`live`]: the Live-flavour callback configuration and its validated parts.
//! - [`project`]: project ids, the tenant boundary of every resource.
//! - [`sdk_auth`]: the `SDK-HMAC-SHA256` request signature of the Huawei Cloud SDKs.
//! - [`secrets`]: the master key that seals secrets at rest, and credential generation.
//! - [`target`]: which callback target addresses are private and refused by default.
//! - [`timefmt`]: the UTC timestamp formats of the documented APIs.
#![forbid(unsafe_code)]

pub mod field;
pub mod live;
pub mod project;
pub mod sdk_auth;
pub mod secrets;
pub mod target;
pub mod timefmt;
