//! The master key that seals secrets at rest, and generation of credentials.
//!
//! Secret keys and callback keys are sealed with XChaCha20-Poly1305 (random 192-bit
//! nonces, so no nonce bookkeeping), with the row they belong to as associated data, so a
//! sealed value copied into another row does not open. Tokens are never stored at all:
//! only their SHA-256 digest, which is enough to recognise them and useless to a thief.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;
use rand::distributions::Uniform;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// The server's key for secrets at rest. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct MasterKey(XChaCha20Poly1305);

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be 32 bytes written as 64 hex characters")]
    BadKey,
    #[error("a sealed secret did not open: wrong master key, or the data was altered")]
    Open,
    #[error("sealing a secret failed")]
    Seal,
}

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

impl MasterKey {
    /// A fresh random key, returned with its hex form for the operator to keep.
    pub fn generate() -> (Self, SecretString) {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        (
            Self(XChaCha20Poly1305::new(&key)),
            SecretString::from(hex::encode(key)),
        )
    }

    pub fn from_hex(hex_key: &str) -> Result<Self, SealError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SealError::BadKey)?;
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| SealError::BadKey)
    }

    /// `version ‖ nonce ‖ ciphertext`; `context` names the row, e.g. `access_key:AK`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        let ciphertext = self
            .0
            .encrypt(&nonce, payload)
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some((&VERSION, rest)) = sealed.split_first() else {
            return Err(SealError::Open);
        };
        if rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        self.0
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open)
    }

    /// [`open`](Self::open) for secrets that were sealed from UTF-8 text.
    pub fn open_string(&self, context: &str, sealed: &[u8]) -> Result<SecretString, SealError> {
        let bytes = self.open(context, sealed)?;
        String::from_utf8(bytes)
            .map(SecretString::from)
            .map_err(|_| SealError::Open)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let pick = Uniform::from(0..alphabet.len());
    rand::rngs::OsRng
        .sample_iter(pick)
        .take(len)
        .map(|i| char::from(alphabet[i]))
        .collect()
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Prefix of Herald tokens, so secret scanners and people can tell what a leaked one is.
pub const TOKEN_PREFIX: &str = "herald_";

/// An access key in the shape Huawei Cloud uses: 20 upper-case letters and digits.
pub fn generate_access_key() -> String {
    random_string(UPPER_DIGITS, 20)
}

/// A secret key: 40 letters and digits (about 238 bits).
pub fn generate_secret_key() -> SecretString {
    SecretString::from(random_string(ALPHANUMERIC, 40))
}

/// An `X-Auth-Token`: the prefix and 43 letters and digits (about 256 bits).
pub fn generate_token() -> SecretString {
    SecretString::from(format!("{TOKEN_PREFIX}{}", random_string(ALPHANUMERIC, 43)))
}

/// The secret in a recording source's hook URL: 32 letters and digits (about 190 bits),
/// which only URL-safe characters keep pasteable into any media server's config.
pub fn generate_hook_secret() -> SecretString {
    SecretString::from(random_string(ALPHANUMERIC, 32))
}

/// What is stored of a token (or a hook secret) to find it by: its SHA-256, hex.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn seal_round_trips_and_binds_the_context() {
        let (key, hex_key) = MasterKey::generate();
        let sealed = key.seal("access_key:AK1", b"sk-secret").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"sk-secret"));
        assert_eq!(key.open("access_key:AK1", &sealed).unwrap(), b"sk-secret");
        assert!(key.open("access_key:AK2", &sealed).is_err());
        let again = MasterKey::from_hex(hex_key.expose_secret()).unwrap();
        assert_eq!(again.open("access_key:AK1", &sealed).unwrap(), b"sk-secret");
        let (other, _) = MasterKey::generate();
        assert!(other.open("access_key:AK1", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open("access_key:AK1", &tampered).is_err());
        assert!(key.open("access_key:AK1", &[]).is_err());
    }

    #[test]
    fn bad_master_keys_are_refused() {
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(MasterKey::from_hex(&"ab".repeat(32)).is_ok());
    }

    #[test]
    fn generated_credentials_have_their_shapes() {
        let ak = generate_access_key();
        assert_eq!(ak.len(), 20);
        assert!(ak.bytes().all(|b| UPPER_DIGITS.contains(&b)));
        assert_eq!(generate_secret_key().expose_secret().len(), 40);
        let token = generate_token();
        assert!(token.expose_secret().starts_with(TOKEN_PREFIX));
        assert_ne!(generate_access_key(), ak);
        assert_eq!(token_digest("abc").len(), 64);
    }

    #[test]
    fn debug_shows_nothing() {
        let (key, _) = MasterKey::generate();
        assert_eq!(format!("{key:?}"), "MasterKey([redacted])");
    }
}
