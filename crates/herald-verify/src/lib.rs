//! Verify Herald recording callbacks in your receiver.
//!
//! Two schemes, as Herald signs them (SPEC §5 and `RTC-SIGNATURE.md`):
//!
//! - **Live**: the body carries `auth_timestamp` (the Unix time the signature expires) and
//!   `auth_sign`: `md5(key + auth_timestamp)` or `hmac_sha256(key, auth_timestamp +
//!   event_type + publish_domain + app + stream + download_url + play_url)`, lower-case
//!   hex. [`verify_live`] checks both and the expiry.
//! - **RTC**: headers `X-Rtc-Rand`, `X-Rtc-Timestamp` and `X-Rtc-Signature` =
//!   `hmac_sha256(auth_key, rand + timestamp + raw body)`. [`RtcVerifier`] checks the
//!   signature, a timestamp tolerance (±300 s by default) and refuses a `rand` it has seen
//!   within that window (a replay).
//!
//! Signatures are compared in constant time. The caller passes the current time, so
//! tests and replays of recorded traffic can use their own clock.
//!
//! ```
//! use herald_verify::{verify_live, SignType};
//! let body = br#"{"project_id":"p","event_type":"RECORD_OVER","publish_domain":"d","app":"a","stream":"s",
//!     "auth_sign":"3c6f2b0a","auth_timestamp":"1700000600"}"#;
//! // A forged signature is refused, whatever the clock says.
//! assert!(verify_live(body, "0123456789abcdef0123456789abcdef", SignType::HmacSha256, 1_700_000_000).is_err());
//! ```
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a callback did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A field or header the scheme needs is absent.
    Missing(&'static str),
    /// The body is not a JSON object, or a field or header is not of its form.
    Malformed(&'static str),
    /// The signature does not match: a wrong key, or the callback was altered.
    BadSignature,
    /// A Live signature past its `auth_timestamp`.
    Expired { expired_at: i64, now: i64 },
    /// An RTC timestamp further from the clock than the tolerance.
    OutsideTolerance { timestamp: i64, now: i64 },
    /// An RTC `X-Rtc-Rand` already seen within the tolerance window.
    Replayed,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(what) => write!(f, "missing {what}"),
            Self::Malformed(what) => write!(f, "malformed {what}"),
            Self::BadSignature => f.write_str("bad signature"),
            Self::Expired { expired_at, now } => write!(
                f,
                "expired {}s ago (auth_timestamp {expired_at})",
                now - expired_at
            ),
            Self::OutsideTolerance { timestamp, now } => {
                write!(
                    f,
                    "timestamp {timestamp} is {}s from the clock",
                    (now - timestamp).abs()
                )
            }
            Self::Replayed => f.write_str("replayed: this X-Rtc-Rand was already seen"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The Live config's `sign_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignType {
    HmacSha256,
    Md5,
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC-SHA256 takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn equal(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The `auth_sign` a Live notification with these fields must carry.
pub fn live_signature(key: &str, sign_type: SignType, body: &Map<String, Value>) -> Option<String> {
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
    let timestamp = body.get("auth_timestamp")?.as_str()?;
    Some(match sign_type {
        SignType::Md5 => hex::encode(Md5::digest(format!("{key}{timestamp}").as_bytes())),
        SignType::HmacSha256 => {
            let names = [
                "event_type",
                "publish_domain",
                "app",
                "stream",
                "download_url",
                "play_url",
            ];
            let mut parts: Vec<&[u8]> = vec![timestamp.as_bytes()];
            parts.extend(names.iter().map(|n| field(n).as_bytes()));
            hmac_hex(key.as_bytes(), &parts)
        }
    })
}

/// Verifies a Live callback body at Unix time `now`; returns the parsed body.
pub fn verify_live(
    body: &[u8],
    key: &str,
    sign_type: SignType,
    now: i64,
) -> Result<Map<String, Value>, VerifyError> {
    let Ok(Value::Object(fields)) = serde_json::from_slice(body) else {
        return Err(VerifyError::Malformed("body: not a JSON object"));
    };
    let sign = match fields.get("auth_sign") {
        None => return Err(VerifyError::Missing("auth_sign")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(VerifyError::Malformed("auth_sign")),
    };
    let expires_at: i64 = match fields.get("auth_timestamp") {
        None => return Err(VerifyError::Missing("auth_timestamp")),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| VerifyError::Malformed("auth_timestamp"))?,
        Some(_) => return Err(VerifyError::Malformed("auth_timestamp")),
    };
    let expected =
        live_signature(key, sign_type, &fields).ok_or(VerifyError::Malformed("auth_timestamp"))?;
    if !equal(&expected, sign) {
        return Err(VerifyError::BadSignature);
    }
    if expires_at < now {
        return Err(VerifyError::Expired {
            expired_at: expires_at,
            now,
        });
    }
    Ok(fields)
}

/// `X-Rtc-Signature` for a body: hex HMAC-SHA256 of `rand + timestamp + body`.
pub fn rtc_signature(auth_key: &str, rand: &str, timestamp: &str, body: &[u8]) -> String {
    hmac_hex(
        auth_key.as_bytes(),
        &[rand.as_bytes(), timestamp.as_bytes(), body],
    )
}

/// Verifies RTC callbacks, remembering recent `X-Rtc-Rand` values to refuse replays.
/// Share one per receiver (it is `Sync`).
#[derive(Debug)]
pub struct RtcVerifier {
    auth_key: String,
    tolerance: i64,
    /// Rand values seen, with their timestamps; pruned to the tolerance window.
    seen: Mutex<HashMap<String, i64>>,
}

/// The `X-Rtc-*` headers of a request, as received (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct RtcHeaders<'a> {
    pub rand: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl RtcVerifier {
    /// Tolerance ±300 s, as Herald's own tools use.
    pub fn new(auth_key: &str) -> Self {
        Self::with_tolerance(auth_key, 300)
    }

    pub fn with_tolerance(auth_key: &str, tolerance_secs: i64) -> Self {
        Self {
            auth_key: auth_key.to_owned(),
            tolerance: tolerance_secs,
            seen: Mutex::default(),
        }
    }

    /// Verifies one callback at Unix time `now`, over the exact body bytes received.
    pub fn verify(
        &self,
        headers: RtcHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let rand = headers.rand.ok_or(VerifyError::Missing("X-Rtc-Rand"))?;
        let raw_timestamp = headers
            .timestamp
            .ok_or(VerifyError::Missing("X-Rtc-Timestamp"))?;
        let signature = headers
            .signature
            .ok_or(VerifyError::Missing("X-Rtc-Signature"))?;
        let timestamp: i64 = raw_timestamp
            .parse()
            .map_err(|_| VerifyError::Malformed("X-Rtc-Timestamp"))?;
        if !equal(
            &rtc_signature(&self.auth_key, rand, raw_timestamp, body),
            signature,
        ) {
            return Err(VerifyError::BadSignature);
        }
        if (now - timestamp).abs() > self.tolerance {
            return Err(VerifyError::OutsideTolerance { timestamp, now });
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, at| (now - *at).abs() <= self.tolerance);
        if seen.insert(rand.to_owned(), timestamp).is_some() {
            return Err(VerifyError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn live_vectors_computed_with_md5sum_and_openssl() {
        // printf '%s' '0123456789abcdef0123456789abcdef1583676745' | md5sum
        let md5 =
            br#"{"auth_timestamp":"1583676745","auth_sign":"fbea60f41db857bbdee04a5127b742fa"}"#;
        assert!(verify_live(md5, KEY, SignType::Md5, 1583676745).is_ok());
        // printf '%s' '1583676745RECORD_FILE_COMPLETEpush.example.comlivemystreamhttps://obs.example.com/a.m3u8' \
        //   | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        let hmac = br#"{"event_type":"RECORD_FILE_COMPLETE","publish_domain":"push.example.com","app":"live","stream":"mystream",
            "download_url":"https://obs.example.com/a.m3u8","auth_timestamp":"1583676745",
            "auth_sign":"4c115d821c0b1e29d3f7da2b39ce6a5bc2b82f7d29980c17e7e29d6a9c09791c"}"#;
        assert!(verify_live(hmac, KEY, SignType::HmacSha256, 1583676000).is_ok());
        assert_eq!(
            verify_live(hmac, KEY, SignType::Md5, 1583676000),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_live(hmac, KEY, SignType::HmacSha256, 1583676746),
            Err(VerifyError::Expired {
                expired_at: 1583676745,
                now: 1583676746
            })
        );
    }

    #[test]
    fn live_errors_are_precise() {
        assert_eq!(
            verify_live(b"[]", KEY, SignType::Md5, 0),
            Err(VerifyError::Malformed("body: not a JSON object"))
        );
        assert_eq!(
            verify_live(br#"{"auth_timestamp":"1"}"#, KEY, SignType::Md5, 0),
            Err(VerifyError::Missing("auth_sign"))
        );
        assert_eq!(
            verify_live(br#"{"auth_sign":"x"}"#, KEY, SignType::Md5, 0),
            Err(VerifyError::Missing("auth_timestamp"))
        );
        assert_eq!(
            verify_live(
                br#"{"auth_sign":"x","auth_timestamp":"soon"}"#,
                KEY,
                SignType::Md5,
                0
            ),
            Err(VerifyError::Malformed("auth_timestamp"))
        );
    }

    #[test]
    fn rtc_vector_tolerance_and_replay() {
        // printf '%s' '123451700000000{"a":1}' | openssl dgst -sha256 -hmac 8923ab8c2dcef4538923ab8c2dcef453
        let verifier = RtcVerifier::new("8923ab8c2dcef4538923ab8c2dcef453");
        let headers = RtcHeaders {
            rand: Some("12345"),
            timestamp: Some("1700000000"),
            signature: Some("fdc2e16b925d7ab6891f1370e9096b71322dcf78b07ee7c779f841c0211793f7"),
        };
        assert_eq!(verifier.verify(headers, br#"{"a":1}"#, 1700000100), Ok(()));
        assert_eq!(
            verifier.verify(headers, br#"{"a":1}"#, 1700000100),
            Err(VerifyError::Replayed)
        );
        assert_eq!(
            verifier.verify(headers, br#"{"a":2}"#, 1700000100),
            Err(VerifyError::BadSignature)
        );
        let fresh = RtcVerifier::new("8923ab8c2dcef4538923ab8c2dcef453");
        assert_eq!(
            fresh.verify(headers, br#"{"a":1}"#, 1700000301),
            Err(VerifyError::OutsideTolerance {
                timestamp: 1700000000,
                now: 1700000301
            })
        );
        assert_eq!(
            fresh.verify(RtcHeaders::default(), b"", 0),
            Err(VerifyError::Missing("X-Rtc-Rand"))
        );
    }
}
