//! Callback configuration, validated: a request body becomes one of these types before any
//! handler logic runs, so an invalid domain, URL, key or subscription cannot be represented.
//!
//! - [`live`]: Live-flavour callback configs (SPEC §1).
//! - [`rtc`]: RTC apps and their record callback (SPEC §2).
//! - [`callback_url`]: the URL rules both flavours (and recording sources) share.

pub mod callback_url;
pub mod live;
pub mod rtc;
