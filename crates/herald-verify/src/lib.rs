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
//!   signature, a timestamp tolerance (±300 s by default) and refuses a callback it has
//!   already verified within that window (a replay). It knows a callback by its signature,
//!   which covers rand, timestamp and body together: two callbacks that share a rand by
//!   chance (a 32-bit number, so likely among tens of thousands) are both accepted; the
//!   same signed rand, timestamp and body sent again is refused.
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

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashSet};
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
    /// An RTC callback already verified within the tolerance window: the same rand,
    /// timestamp and body, so the same signature.
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
                    now.abs_diff(*timestamp)
                )
            }
            Self::Replayed => f.write_str("replayed: this signed callback was already seen"),
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

fn hmac_bytes(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC-SHA256 takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac_bytes(key, parts))
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

/// Verifies RTC callbacks, remembering the ones verified within the tolerance window to
/// refuse replays. Share one per receiver (it is `Sync`).
///
/// A callback is remembered by its HMAC, not by its `X-Rtc-Rand`: rands are 32-bit, so
/// distinct callbacks share one by chance, while the HMAC covers rand, timestamp and body.
/// Keying on the HMAC rather than on the header strings also catches a replay that moves
/// characters between the unseparated rand and timestamp (rand `…0` + timestamp `17…`
/// re-sent as rand `…` + timestamp `017…` signs the same bytes at the same time).
///
/// The verifier's clock only moves forward: it is the latest `now` it has been given. A
/// callback older than that clock's window is refused as outside tolerance even if the
/// caller's own `now` is older (two threads reading the clock in one order and taking the
/// lock in the other), since it may be a replay of one already forgotten.
#[derive(Debug)]
pub struct RtcVerifier {
    auth_key: String,
    tolerance: i64,
    seen: Mutex<Seen>,
}

/// The callbacks verified within the window, with O(log n) upkeep per callback: no scan.
#[derive(Debug, Default)]
struct Seen {
    /// The latest `now` given; the window ends `tolerance` before it.
    clock: i64,
    /// HMACs of the remembered callbacks, for the replay check.
    macs: HashSet<[u8; 32]>,
    /// The same callbacks, earliest timestamp first: timestamps arrive out of order within
    /// the tolerance, so a heap rather than a queue, and expiry pops from the front.
    by_timestamp: BinaryHeap<Reverse<(i64, [u8; 32])>>,
}

impl Seen {
    /// Forgets callbacks timestamped before `oldest`: a replay of one would be refused as
    /// outside tolerance anyway.
    fn forget_before(&mut self, oldest: i64) {
        while let Some(earliest) = self.by_timestamp.peek_mut() {
            let Reverse((timestamp, _)) = *earliest;
            if timestamp >= oldest {
                break;
            }
            let Reverse((_, mac)) = PeekMut::pop(earliest);
            self.macs.remove(&mac);
        }
    }

    /// Remembers a callback; false when it was already remembered.
    fn insert(&mut self, mac: [u8; 32], timestamp: i64) -> bool {
        if !self.macs.insert(mac) {
            return false;
        }
        self.by_timestamp.push(Reverse((timestamp, mac)));
        true
    }
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
            seen: Mutex::new(Seen {
                clock: i64::MIN,
                ..Seen::default()
            }),
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
        let mac = hmac_bytes(
            self.auth_key.as_bytes(),
            &[rand.as_bytes(), raw_timestamp.as_bytes(), body],
        );
        if !equal(&hex::encode(mac), signature) {
            return Err(VerifyError::BadSignature);
        }
        // i128: a signed timestamp far from `now` must not overflow the subtraction.
        if (i128::from(now) - i128::from(timestamp)).abs() > i128::from(self.tolerance) {
            return Err(VerifyError::OutsideTolerance { timestamp, now });
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.clock = seen.clock.max(now);
        let oldest = seen.clock.saturating_sub(self.tolerance);
        seen.forget_before(oldest);
        if timestamp < oldest {
            return Err(VerifyError::OutsideTolerance {
                timestamp,
                now: seen.clock,
            });
        }
        if !seen.insert(mac, timestamp) {
            return Err(VerifyError::Replayed);
        }
        Ok(())
    }

    /// How many callbacks are remembered, to check that expiry bounds the memory.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        debug_assert_eq!(seen.macs.len(), seen.by_timestamp.len());
        seen.macs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::collections::hash_map::Entry;

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

    /// An RTC callback as Herald would send it: headers signed with `KEY`, and its body.
    #[derive(Debug, Clone)]
    struct Callback {
        rand: String,
        timestamp: String,
        signature: String,
        body: Vec<u8>,
    }

    impl Callback {
        fn new(rand: &str, timestamp: i64, body: &[u8]) -> Self {
            let timestamp = timestamp.to_string();
            Self {
                signature: rtc_signature(KEY, rand, &timestamp, body),
                rand: rand.to_owned(),
                timestamp,
                body: body.to_vec(),
            }
        }

        fn send(&self, verifier: &RtcVerifier, now: i64) -> Result<(), VerifyError> {
            let headers = RtcHeaders {
                rand: Some(&self.rand),
                timestamp: Some(&self.timestamp),
                signature: Some(&self.signature),
            };
            verifier.verify(headers, &self.body, now)
        }
    }

    const T: i64 = 1_700_000_000;

    #[test]
    fn a_rand_shared_by_chance_is_not_a_replay() {
        let verifier = RtcVerifier::new(KEY);
        let first = Callback::new("4242", T, br#"{"n":1}"#);
        assert_eq!(first.send(&verifier, T), Ok(()));
        // Same rand, another body; same rand and body, another timestamp.
        assert_eq!(
            Callback::new("4242", T, br#"{"n":2}"#).send(&verifier, T),
            Ok(())
        );
        assert_eq!(
            Callback::new("4242", T + 1, br#"{"n":1}"#).send(&verifier, T),
            Ok(())
        );
        assert_eq!(first.send(&verifier, T + 1), Err(VerifyError::Replayed));
    }

    #[test]
    fn a_replay_that_moves_a_digit_from_rand_to_timestamp_is_refused() {
        let verifier = RtcVerifier::new(KEY);
        let sent = Callback::new("120", T, b"{}");
        assert_eq!(sent.send(&verifier, T), Ok(()));
        // "120" + "1700000000" and "12" + "01700000000" are the same signed bytes, and the
        // timestamp parses to the same second.
        let moved = Callback {
            rand: "12".into(),
            timestamp: format!("0{T}"),
            ..sent.clone()
        };
        assert_eq!(
            moved.send(&RtcVerifier::new(KEY), T),
            Ok(()),
            "signature holds"
        );
        assert_eq!(moved.send(&verifier, T), Err(VerifyError::Replayed));
    }

    /// 100,000 legitimate callbacks in one window, a quarter of them sharing one rand, a
    /// quarter sixteen rands, a quarter one rand and 333 bodies (so only the timestamp
    /// tells them apart), timestamps out of order: none is a replay, and each sent again is.
    #[test]
    fn a_hundred_thousand_callbacks_with_colliding_rands_are_all_accepted_once() {
        const N: i64 = 100_000;
        let verifier = RtcVerifier::new(KEY);
        let mut random: u32 = 0x9e37_79b9;
        let callbacks: Vec<(Callback, i64)> = (0..N)
            .map(|i| {
                // Timestamps within ±150 s of T, in no order; `now` creeps from T to T+149,
                // so every one stays within ±300 s of every `now` used.
                let mut timestamp = T - 150 + (i * 7919) % 301;
                let body = format!(r#"{{"n":{i}}}"#);
                let (rand, body) = match i % 4 {
                    0 => ("7".to_owned(), body),
                    1 => (((i / 4) % 16).to_string(), body),
                    2 => {
                        let k = i / 4;
                        timestamp = T - 150 + k % 301;
                        ("4242".to_owned(), format!(r#"{{"k":{}}}"#, k / 301))
                    }
                    _ => {
                        random ^= random << 13;
                        random ^= random >> 17;
                        random ^= random << 5;
                        (random.to_string(), body)
                    }
                };
                let now = T + i * 150 / N;
                (Callback::new(&rand, timestamp, body.as_bytes()), now)
            })
            .collect();
        for (i, (callback, now)) in callbacks.iter().enumerate() {
            assert_eq!(
                callback.send(&verifier, *now),
                Ok(()),
                "callback {i}: {callback:?}"
            );
        }
        assert_eq!(verifier.remembered(), callbacks.len());
        for (i, (callback, _)) in callbacks.iter().enumerate() {
            assert_eq!(
                callback.send(&verifier, T + 149),
                Err(VerifyError::Replayed),
                "callback {i} sent again: {callback:?}"
            );
        }
    }

    #[test]
    fn remembered_callbacks_expire_and_memory_stays_bounded() {
        let verifier = RtcVerifier::with_tolerance(KEY, 10);
        let early: Vec<Callback> = (0..50)
            .map(|i| Callback::new("1", T, format!("{i}").as_bytes()))
            .collect();
        for callback in &early {
            assert_eq!(callback.send(&verifier, T), Ok(()));
        }
        assert_eq!(verifier.remembered(), 50);
        // Five callbacks a second, each stamped with its second; the window holds 11 seconds.
        for second in 1..=100 {
            let now = T + second;
            for i in 0..5 {
                let callback = Callback::new("1", now, format!("{second}/{i}").as_bytes());
                assert_eq!(callback.send(&verifier, now), Ok(()));
            }
            // The first 50 until T falls out of the window, then the last 11 seconds' worth.
            let expected = if second <= 10 {
                50 + 5 * second
            } else {
                5 * 11
            };
            assert_eq!(verifier.remembered(), usize::try_from(expected).unwrap());
        }
        // Forgotten, and refused all the same: it is outside the tolerance now.
        assert_eq!(
            early[0].send(&verifier, T + 100),
            Err(VerifyError::OutsideTolerance {
                timestamp: T,
                now: T + 100
            })
        );
        // One stamped at the far edge of the window is kept until no replay of it can pass.
        let ahead = Callback::new("1", T + 110, b"ahead");
        assert_eq!(ahead.send(&verifier, T + 100), Ok(()));
        assert_eq!(
            Callback::new("1", T + 120, b"tick").send(&verifier, T + 120),
            Ok(())
        );
        assert_eq!(ahead.send(&verifier, T + 120), Err(VerifyError::Replayed));
        assert_eq!(
            ahead.send(&verifier, T + 121),
            Err(VerifyError::OutsideTolerance {
                timestamp: T + 110,
                now: T + 121
            })
        );
    }

    #[test]
    fn a_stale_now_cannot_replay_a_forgotten_callback() {
        let verifier = RtcVerifier::with_tolerance(KEY, 10);
        let old = Callback::new("1", T, b"old");
        assert_eq!(old.send(&verifier, T), Ok(()));
        // A later `now` forgets it; a caller whose clock reading is older must not then
        // get it through.
        assert_eq!(
            Callback::new("2", T + 11, b"new").send(&verifier, T + 11),
            Ok(())
        );
        assert_eq!(
            old.send(&verifier, T + 10),
            Err(VerifyError::OutsideTolerance {
                timestamp: T,
                now: T + 11
            })
        );
    }

    proptest! {
        /// Against a model that never forgets: with timestamps out of order within the
        /// tolerance and a clock that moves forward, a callback is refused as a replay
        /// exactly when the same rand, timestamp and body was accepted before, and the
        /// verifier remembers exactly the accepted callbacks still within the window.
        #[test]
        fn replays_and_only_replays_are_refused(
            // (rand, timestamp - now, body, seconds the clock moves, resend the nth last)
            calls in prop::collection::vec(
                (
                    0usize..3,
                    -12i64..=12,
                    0usize..3,
                    0i64..3,
                    prop::option::of(prop::sample::select(vec![0usize, 1, 2, 5, 17])),
                ),
                1..300,
            ),
        ) {
            const TOLERANCE: i64 = 10;
            let verifier = RtcVerifier::with_tolerance(KEY, TOLERANCE);
            let mut sent: Vec<Callback> = Vec::new();
            let mut accepted: HashMap<(String, String, Vec<u8>), i64> = HashMap::new();
            let mut now = T;
            for (rand, offset, body, step, resend) in calls {
                now += step;
                let callback = match resend {
                    Some(back) if back < sent.len() => sent[sent.len() - 1 - back].clone(),
                    _ => {
                        let bodies = [b"{}".as_slice(), b"{\"a\":1}", b""];
                        Callback::new(["7", "70", "4242"][rand], now + offset, bodies[body])
                    }
                };
                let timestamp: i64 = callback.timestamp.parse().unwrap();
                let key = (callback.rand.clone(), callback.timestamp.clone(), callback.body.clone());
                let expected = if (now - timestamp).abs() > TOLERANCE {
                    Err(VerifyError::OutsideTolerance { timestamp, now })
                } else {
                    match accepted.entry(key) {
                        Entry::Occupied(_) => Err(VerifyError::Replayed),
                        Entry::Vacant(slot) => {
                            slot.insert(timestamp);
                            Ok(())
                        }
                    }
                };
                prop_assert_eq!(callback.send(&verifier, now), expected);
                if (now - timestamp).abs() <= TOLERANCE {
                    let within = accepted.values().filter(|t| **t >= now - TOLERANCE).count();
                    prop_assert_eq!(verifier.remembered(), within);
                }
                sent.push(callback);
            }
        }
    }
}
