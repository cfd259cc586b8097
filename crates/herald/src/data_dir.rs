//! The data dir is the server's alone: created 0700, and the files Herald creates in it
//! (the embedded database, `master.key`, `herald.lock`) 0600, whatever the umask. The
//! Debian package makes `/var/lib/herald` private itself; elsewhere the umask used to
//! decide, which left the database (sealed secrets aside, every config and event)
//! readable by every local user.
//!
//! SQLite creates the database's `-wal` and `-shm` files with the database file's mode, so
//! creating that one 0600 before SQLite opens it is enough. An existing dir or file keeps
//! the mode the operator gave it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use herald_store::sqlite::DATABASE_FILE;

/// Creates `dir` (and any missing parent) with mode 0700, unless it exists.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` for writing, creating it with mode 0600 when missing (never truncating).
pub fn open_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// The embedded database file, created empty with mode 0600 when missing (SQLite takes an
/// empty file as an empty database).
pub fn create_database_file(data_dir: &Path) -> io::Result<()> {
    create_private_dir(data_dir)?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(data_dir.join(DATABASE_FILE))
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::settings::Settings;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    }

    /// A server started on a data dir that does not exist yet leaves nothing in it that
    /// another user can read, under the usual umask 022 (which made it 0755 and 0644).
    #[tokio::test]
    async fn a_new_data_dir_and_its_files_are_private() {
        let parent = tempfile::tempdir().unwrap();
        let data_dir = parent.path().join("herald-data");
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.clone(),
            ..Settings::default()
        };
        let running = crate::app::start(&settings).await.unwrap();
        assert_eq!(mode(&data_dir), 0o700);
        // The database with its -wal and -shm files (SQLite copies the database's mode).
        let mut database_files = 0;
        for entry in fs::read_dir(&data_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().contains(DATABASE_FILE) {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                database_files += 1;
            }
        }
        assert!(database_files >= 2, "{database_files} database files");
        for name in ["master.key", "herald.lock"] {
            assert_eq!(mode(&data_dir.join(name)), 0o600, "{name}");
        }
        running.shutdown.cancel();
    }

    #[test]
    fn existing_modes_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let db = dir.path().join(DATABASE_FILE);
        fs::write(&db, b"").unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o640)).unwrap();
        create_database_file(dir.path()).unwrap();
        assert_eq!((mode(dir.path()), mode(&db)), (0o750, 0o640));
    }
}
