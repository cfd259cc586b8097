//! Finding the master key: `HERALD_MASTER_KEY`, or `master.key` in the data dir, created
//! with mode 0600 on first start.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use herald_core::secrets::MasterKey;
use herald_store::sqlite::DATABASE_FILE;
use secrecy::ExposeSecret;

pub const MASTER_KEY_FILE: &str = "master.key";

pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<MasterKey> {
    if let Some(hex_key) = configured {
        return MasterKey::from_hex(hex_key).context("HERALD_MASTER_KEY");
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(hex_key) => {
            warn_if_readable_by_others(&path);
            return MasterKey::from_hex(&hex_key).with_context(|| path.display().to_string());
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if data_dir.join(DATABASE_FILE).exists() {
        // A new key would make every sealed secret in the existing database unreadable.
        bail!(
            "{} holds a database but no {MASTER_KEY_FILE}: restore the key file or set HERALD_MASTER_KEY",
            data_dir.display()
        );
    }
    crate::data_dir::create_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (key, hex_key) = MasterKey::generate();
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            file.write_all(hex_key.expose_secret().as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new master key");
            Ok(key)
        }
        // Another herald process created it first: use theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => load_or_create(None, data_dir),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the master key file is readable by others; chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(None, &data).unwrap();
        let sealed = first.seal("t", b"x").unwrap();
        let path = data.join(MASTER_KEY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = load_or_create(None, &data).unwrap();
        assert_eq!(again.open("t", &sealed).unwrap(), b"x");
    }

    #[test]
    fn refuses_to_replace_a_lost_key_of_an_existing_database() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DATABASE_FILE), b"").unwrap();
        assert!(load_or_create(None, dir.path()).is_err());
    }

    #[test]
    fn configured_key_wins_and_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_or_create(Some(&"ab".repeat(32)), dir.path()).is_ok());
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
        assert!(load_or_create(Some("nothex"), dir.path()).is_err());
    }
}
