//! Every signature Herald puts on an outbound notification (SPEC §5): the Live
//! `auth_sign` (MD5 or HMACSHA256) and the RTC `X-Rtc-*` headers (RTC-SIGNATURE.md).
//!
//! The inbound signature of the Huawei Cloud SDKs is [`crate::sdk_auth`]'s; the two share
//! only [`crate::mac::hmac_sha256_hex`].

use md5::{Digest, Md5};

use crate::config::live::{SignKey, SignType};
use crate::config::rtc::AuthKey;
use crate::event::live::LiveEvent;
use crate::mac::hmac_sha256_hex;

/// The key a Live notification is signed with, as the config had it when the event came.
#[derive(Debug, Clone)]
pub struct LiveSigning {
    pub sign_type: SignType,
    pub key: SignKey,
}

/// `auth_sign` for a notification whose signature expires at `auth_timestamp`.
pub fn live_auth_sign(signing: &LiveSigning, auth_timestamp: &str, event: &LiveEvent) -> String {
    let key = signing.key.expose();
    match signing.sign_type {
        SignType::Md5 => hex::encode(Md5::digest(format!("{key}{auth_timestamp}").as_bytes())),
        SignType::HmacSha256 => {
            let message = [
                auth_timestamp,
                event.event_type.as_str(),
                event.text("publish_domain"),
                event.text("app"),
                event.text("stream"),
                event.text("download_url"),
                event.text("play_url"),
            ]
            .concat();
            hmac_sha256_hex(key.as_bytes(), message.as_bytes())
        }
    }
}

/// The `X-Rtc-*` headers of one callback (RTC-SIGNATURE.md): `rand`, `timestamp` and the
/// lower-case hex HMAC-SHA256 of `rand + timestamp + body`, keyed by the auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcSignature {
    pub rand: String,
    pub timestamp: String,
    pub signature: String,
}

pub fn rtc_signature(key: &AuthKey, rand: u32, timestamp: i64, body: &[u8]) -> RtcSignature {
    let (rand, timestamp) = (rand.to_string(), timestamp.to_string());
    let mut message = Vec::with_capacity(rand.len() + timestamp.len() + body.len());
    message.extend_from_slice(rand.as_bytes());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    let signature = hmac_sha256_hex(key.expose().as_bytes(), &message);
    RtcSignature {
        rand,
        timestamp,
        signature,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A Live event with some fields absent (notification.rs's tests use it too).
    pub(crate) fn event() -> LiveEvent {
        LiveEvent::parse(
            "",
            &json!({
                "event_type": "RECORD_FILE_COMPLETE", "publish_domain": "push.example.com",
                "app": "live", "stream": "mystream", "file_size": 3957964,
                "download_url": "https://obs.example.com/a.m3u8",
            }),
        )
        .unwrap()
    }

    pub(crate) fn signing(sign_type: SignType) -> LiveSigning {
        LiveSigning {
            sign_type,
            key: SignKey::parse("key", "0123456789abcdef0123456789abcdef").unwrap(),
        }
    }

    #[test]
    fn md5_is_key_then_timestamp() {
        // echo -n '0123456789abcdef0123456789abcdef1583676745' | md5sum
        assert_eq!(
            live_auth_sign(&signing(SignType::Md5), "1583676745", &event()),
            "fbea60f41db857bbdee04a5127b742fa"
        );
    }

    #[test]
    fn hmac_covers_the_documented_fields_with_absent_ones_empty() {
        // printf '%s' '1583676745RECORD_FILE_COMPLETEpush.example.comlivemystreamhttps://obs.example.com/a.m3u8' \
        //   | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        assert_eq!(
            live_auth_sign(&signing(SignType::HmacSha256), "1583676745", &event()),
            "4c115d821c0b1e29d3f7da2b39ce6a5bc2b82f7d29980c17e7e29d6a9c09791c"
        );
    }

    #[test]
    fn signature_is_hmac_of_rand_timestamp_and_body() {
        let key = AuthKey::parse("k", "8923ab8c2dcef4538923ab8c2dcef453").unwrap();
        let sig = rtc_signature(&key, 12345, 1700000000, br#"{"a":1}"#);
        // printf '%s' '123451700000000{"a":1}' | openssl dgst -sha256 -hmac 8923ab8c2dcef4538923ab8c2dcef453
        assert_eq!(sig.rand, "12345");
        assert_eq!(sig.timestamp, "1700000000");
        assert_eq!(
            sig.signature,
            "fdc2e16b925d7ab6891f1370e9096b71322dcf78b07ee7c779f841c0211793f7"
        );
    }
}
