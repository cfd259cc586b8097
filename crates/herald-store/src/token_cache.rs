//! The embedded store's memory of tokens it has found, so that an ingest request does not
//! cost a query (a hand-off to a SQLite thread and back) just to learn whose token it is.
//!
//! A revocation must still refuse the token at once, and `herald tokens revoke` runs in
//! another process, straight on the database file. So every change to the tokens (here or
//! in that process) replaces a stamp file in the data directory after its commit, and every
//! lookup first compares the stamp with the one its entries were found under (a `stat`, no
//! thread hand-off): a different stamp empties the cache. An entry found while the stamp
//! changed is not kept (see [`TokenCache::keep`]), so a lookup that read the token just
//! before its revocation committed cannot bring it back. Entries also age out after
//! [`MAX_AGE`], which bounds what a change made behind Herald's back (an operator's own
//! SQL) can leave, and only tokens that exist are kept, at most [`MAX_ENTRIES`].
//!
//! SQLite has no cheap cross-process change notice (`PRAGMA data_version` is itself a
//! query), and a file watcher would fire on every commit, hence the stamp.
//!
//! It lives beside the backends rather than in `sqlite` because the shared credentials SQL
//! asks every backend for it ([`crate::backend::SqlBackend::token_cache`]), and that trait
//! names no backend's types.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald_core::project::ProjectId;

/// Name of the stamp file in the data directory.
pub const STAMP_FILE: &str = "tokens.stamp";

/// How long a found token is trusted without looking again.
const MAX_AGE: Duration = Duration::from_secs(10);

/// At most this many tokens are remembered; past it the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// Which version of the stamp file a lookup saw: a new file (a new inode) each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    mtime_ns: i64,
}

#[derive(Debug)]
struct Entry {
    project: ProjectId,
    expires_at_ms: Option<i64>,
    found: Instant,
}

#[derive(Debug, Default)]
struct Entries {
    stamp: Option<Stamp>,
    by_digest: HashMap<String, Entry>,
}

#[derive(Debug)]
pub(crate) struct TokenCache {
    stamp_path: PathBuf,
    entries: Mutex<Entries>,
}

impl TokenCache {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            stamp_path: data_dir.join(STAMP_FILE),
            entries: Mutex::default(),
        }
    }

    /// The stamp as it is now; `None` when it cannot be read (then nothing is trusted).
    pub(crate) fn stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(&self.stamp_path).ok()?;
        Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        })
    }

    /// The project of a token found earlier under the current stamp, still unexpired at
    /// `now_ms`; `None` means "look it up".
    pub(crate) fn get(&self, digest: &str, now_ms: i64) -> Option<ProjectId> {
        let stamp = self.stamp()?;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.stamp != Some(stamp) {
            entries.by_digest.clear();
            entries.stamp = Some(stamp);
            return None;
        }
        let entry = entries.by_digest.get(digest)?;
        let fresh =
            entry.found.elapsed() < MAX_AGE && entry.expires_at_ms.is_none_or(|at| at > now_ms);
        if fresh {
            Some(entry.project.clone())
        } else {
            entries.by_digest.remove(digest);
            None
        }
    }

    /// Remembers a token looked up while the stamp was `seen` (read before the query), if
    /// the stamp has not changed since: a change in between may be its revocation.
    pub(crate) fn keep(
        &self,
        seen: Option<Stamp>,
        digest: &str,
        project: ProjectId,
        expires_at_ms: Option<i64>,
    ) {
        let Some(seen) = seen else { return };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if self.stamp() != Some(seen) || entries.stamp != Some(seen) {
            return;
        }
        if entries.by_digest.len() >= MAX_ENTRIES {
            entries.by_digest.clear();
        }
        entries.by_digest.insert(
            digest.to_owned(),
            Entry {
                project,
                expires_at_ms,
                found: Instant::now(),
            },
        );
    }

    /// Tells every process on this data directory that the tokens changed: call after the
    /// change has committed. The stamp is a new file each time (written aside, then renamed
    /// over the old one), so its inode changes even where timestamps are coarse.
    pub(crate) fn changed(&self) -> std::io::Result<()> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_digest
            .clear();
        // Aside under a name of this call's own: two changes at once in one process each
        // rename their own file (one name per process let the second rename find none).
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let aside = self
            .stamp_path
            .with_extension(format!("stamp.{}.{call}", std::process::id()));
        std::fs::write(&aside, b"")?;
        std::fs::rename(&aside, &self.stamp_path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn project(name: &str) -> ProjectId {
        ProjectId::parse("project_id", name).unwrap()
    }

    #[test]
    fn nothing_is_trusted_without_a_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path());
        let seen = cache.stamp();
        assert_eq!(seen, None);
        cache.keep(seen, "d", project("p"), None);
        assert_eq!(cache.get("d", 0), None);
    }

    #[test]
    fn a_change_anywhere_forgets_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let here = TokenCache::new(dir.path());
        here.changed().unwrap();
        // The first look under a stamp only learns the stamp.
        assert_eq!(here.get("d", 0), None);
        here.keep(here.stamp(), "d", project("p"), None);
        assert_eq!(here.get("d", 0), Some(project("p")));
        // Another process (another cache on the same directory) revokes a token.
        TokenCache::new(dir.path()).changed().unwrap();
        assert_eq!(here.get("d", 0), None);
        assert_eq!(here.get("d", 0), None);
    }

    /// Revocations at the same moment in one process (two API requests) each stamp
    /// without failing, and leave no file aside.
    #[test]
    fn changes_at_once_in_one_process_all_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(TokenCache::new(dir.path()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || (0..50).try_for_each(|_| cache.changed()))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, [STAMP_FILE]);
    }

    #[test]
    fn a_token_read_while_the_stamp_changed_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path());
        cache.changed().unwrap();
        assert_eq!(cache.get("d", 0), None);
        let seen = cache.stamp();
        // The revocation commits and stamps between the lookup's query and `keep`.
        TokenCache::new(dir.path()).changed().unwrap();
        cache.keep(seen, "d", project("p"), None);
        assert_eq!(cache.get("d", 0), None);
        assert_eq!(cache.get("d", 0), None);
    }

    #[test]
    fn an_expired_token_is_looked_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path());
        cache.changed().unwrap();
        assert_eq!(cache.get("d", 0), None);
        cache.keep(cache.stamp(), "d", project("p"), Some(1_000));
        assert_eq!(cache.get("d", 999), Some(project("p")));
        assert_eq!(cache.get("d", 1_000), None);
    }
}
