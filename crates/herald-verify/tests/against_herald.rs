//! The verifier against Herald's own signing code (`herald_core`): what Herald signs
//! verifies, and what anyone alters does not.
//!
//! The Live schemes sign only some fields (MD5: the key and `auth_timestamp`; HMACSHA256:
//! also event type, domain, app, stream, download and play URLs), so for Live the property
//! is over those fields and the signature; an RTC signature covers every body byte.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_core::config::live::{SignKey, SignType as CoreSignType};
use herald_core::config::rtc::AuthKey;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::notification::render_live;
use herald_core::notification::render_rtc;
use herald_core::signing::LiveSigning;
use herald_core::signing::rtc_signature;
use herald_verify::{RtcHeaders, RtcVerifier, SignType, VerifyError, verify_live};
use proptest::prelude::*;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

fn live_event(stream: &str, app: &str, url: &str) -> LiveEvent {
    LiveEvent::parse(
        "",
        &json!({"event_type": "RECORD_FILE_COMPLETE", "publish_domain": "push.example.com", "app": app,
                "stream": stream, "download_url": url, "file_size": 42}),
    )
    .unwrap()
}

fn signed_live(key: &str, sign_type: CoreSignType, event: &LiveEvent, expires_at: i64) -> Vec<u8> {
    let signing = LiveSigning {
        sign_type,
        key: SignKey::parse("key", key).unwrap(),
    };
    render_live("p1", event, Some(&signing), expires_at)
}

proptest! {
    #[test]
    fn what_herald_signs_for_live_verifies_and_changes_to_signed_parts_do_not(
        key in "[A-Za-z0-9]{32}",
        stream in "[a-z0-9_-]{1,20}",
        app in "[a-z]{1,10}",
        url in "https://obs\\.example\\.com/[a-z0-9/]{0,30}",
        ttl in 1i64..100_000,
        md5 in any::<bool>(),
        target in 0usize..4,
        nudge in 1u8..=255,
    ) {
        let (core_type, sign_type) = if md5 { (CoreSignType::Md5, SignType::Md5) } else { (CoreSignType::HmacSha256, SignType::HmacSha256) };
        let body = signed_live(&key, core_type, &live_event(&stream, &app, &url), NOW + ttl);
        prop_assert!(verify_live(&body, &key, sign_type, NOW).is_ok());
        let expired = matches!(verify_live(&body, &key, sign_type, NOW + ttl + 1), Err(VerifyError::Expired { .. }));
        prop_assert!(expired, "not refused as expired after auth_timestamp");

        // Alter one byte of a part the scheme signs; the result must not verify.
        let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let name = match (md5, target) {
            (_, 0) => "auth_sign",
            (_, 1) => "auth_timestamp",
            (true, _) => "auth_sign",
            (false, 2) => "stream",
            (false, _) => "download_url",
        };
        let mut bytes = fields[name].as_str().unwrap().as_bytes().to_vec();
        let at = (nudge as usize) % bytes.len();
        bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
        fields.insert(name.into(), json!(String::from_utf8(bytes).unwrap()));
        let altered = serde_json::to_vec(&fields).unwrap();
        if altered != body {
            prop_assert!(verify_live(&altered, &key, sign_type, NOW).is_err(), "{name} altered yet verified");
        }
    }

    #[test]
    fn what_herald_signs_for_rtc_verifies_and_any_altered_byte_does_not(
        key in "[A-Za-z0-9]{32,64}",
        stream in "[a-z0-9_-]{1,20}",
        room in "[a-z0-9]{0,12}",
        rand in any::<u32>(),
        skew in -300i64..=300,
        flip in any::<prop::sample::Index>(),
        in_signature in any::<bool>(),
    ) {
        let event = RtcEvent::parse("", &json!({"event_type": "RECORD_FILE_COMPLETE", "stream_name": stream, "room_id": room, "width": 1280})).unwrap();
        let body = render_rtc("0123456789abcdef01234567", &event);
        let sig = rtc_signature(&AuthKey::parse("k", &key).unwrap(), rand, NOW + skew, &body);
        let headers = RtcHeaders { rand: Some(&sig.rand), timestamp: Some(&sig.timestamp), signature: Some(&sig.signature) };
        prop_assert_eq!(RtcVerifier::new(&key).verify(headers, &body, NOW), Ok(()));

        let (mut altered_body, mut altered_sig) = (body.clone(), sig.signature.clone().into_bytes());
        let target = if in_signature { &mut altered_sig } else { &mut altered_body };
        let i = flip.index(target.len());
        target[i] ^= 0x01;
        let altered_sig = String::from_utf8_lossy(&altered_sig).into_owned();
        let headers = RtcHeaders { signature: Some(&altered_sig), ..headers };
        prop_assert_eq!(RtcVerifier::new(&key).verify(headers, &altered_body, NOW), Err(VerifyError::BadSignature));
    }
}

#[test]
fn a_verifier_refuses_what_another_key_signed() {
    let body = signed_live(
        "0123456789abcdef0123456789abcdef",
        CoreSignType::HmacSha256,
        &live_event("s", "a", "https://x/y"),
        NOW + 600,
    );
    assert_eq!(
        verify_live(
            &body,
            "fedcba9876543210fedcba9876543210",
            SignType::HmacSha256,
            NOW
        ),
        Err(VerifyError::BadSignature)
    );
}
