//! The one MAC helper the outbound signatures ([`crate::signing`]) and the inbound SDK
//! signature ([`crate::sdk_auth`]) share.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Lower-case hex HMAC-SHA256; keys of any length are valid, so this cannot fail.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}
