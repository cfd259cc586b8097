//! WAL checkpoints of the embedded store, off the writers' path.
//!
//! Left to SQLite, the connection whose commit takes the WAL past 1,000 pages copies them
//! into the database file before its commit returns: every ~4 MiB of writes, a writer
//! (ingest or the outcomes of a batch of callbacks) stalls for the copy, and a page changed
//! again and again between two such checkpoints is written to the database file each time.
//! Here one task checkpoints once a second instead ([`EVERY`]):
//!
//! 1. a `PASSIVE` checkpoint beside the writers copies what the WAL holds;
//! 2. then, holding the store's write gate (no writer of this process runs meanwhile), a
//!    second one copies what was written during the first, which is little. With the WAL
//!    wholly copied, the next writer starts it again from its beginning; without this
//!    step a busy writer could keep the WAL from ever being wholly copied, and it would
//!    grow without end.
//!
//! Checkpoints do not touch durability: a commit is durable in the WAL. The WAL file is cut
//! back to [`WAL_SIZE_LIMIT`] when it is started again, so a WAL that grew while a long
//! read held its pages does not keep the disk. The task runs under the server's
//! [`Supervisor`] as "wal checkpointer"; if it cannot be kept running, `/readyz` names it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use tokio::sync::Mutex;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::supervision::{Rounds, Supervisor};

/// The checkpointing task's name, for supervision and `/readyz`.
pub const TASK: &str = "wal checkpointer";

/// How often the WAL is copied into the database file.
const EVERY: Duration = Duration::from_secs(1);

/// The size the WAL file is cut back to when it is started again (`journal_size_limit`).
pub(super) const WAL_SIZE_LIMIT: &str = "67108864";

/// Starts the checkpointing task on `pool` under `tasks`; it ends when the guard returned
/// is dropped (with the store).
pub(super) fn start(pool: SqlitePool, gate: Arc<Mutex<()>>, tasks: &Supervisor) -> DropGuard {
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tasks.spawn(TASK, move || {
        checkpoints(pool.clone(), gate.clone(), stopping.clone())
    });
    stop.drop_guard()
}

async fn checkpoints(pool: SqlitePool, gate: Arc<Mutex<()>>, stop: CancellationToken) {
    let mut rounds = Rounds::new(EVERY, stop);
    while rounds.next().await {
        if let Err(e) = checkpoint(&pool, &gate).await {
            // Another process (the CLI) checkpointing, or the disk: the next tick tries
            // again, and the WAL keeps every commit meanwhile.
            tracing::warn!(error = %e, "a WAL checkpoint failed");
        }
    }
}

/// One checkpoint, in the two steps of the module's description. Returns the pages the
/// WAL held after the first step, or `None` when another connection (the CLI's) was
/// checkpointing: that one does the work.
async fn checkpoint(pool: &SqlitePool, gate: &Mutex<()>) -> Result<Option<i64>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // (busy, pages in the WAL, pages copied): 0 pages when nothing was written since the
    // WAL was last started again.
    let (busy, pages, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    if busy != 0 {
        return Ok(None);
    }
    if pages > 0 {
        let _writers_wait = gate.lock().await;
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(pages))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::str::FromStr;

    use super::*;
    use crate::sqlite::{DATABASE_FILE, SqliteStore};
    use herald_core::secrets::MasterKey;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

    /// The pages in the WAL, as a `PASSIVE` checkpoint reports them (after copying them),
    /// asked again while the checkpointer's own is running.
    async fn wal_pages(pool: &SqlitePool) -> i64 {
        for _ in 0..100 {
            let (busy, pages, _): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(pool)
                    .await
                    .unwrap();
            if busy == 0 {
                return pages;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a checkpoint was running all along");
    }

    /// Writes 2,000 pages in one transaction: past the 1,000 at which a writer would have
    /// checkpointed by itself.
    async fn write_pages(pool: &SqlitePool) {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS filler (b BLOB); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO filler SELECT randomblob(3000) FROM n",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    /// One checkpoint copies the whole WAL, so the next write starts it again from its
    /// beginning, rather than after the pages already there.
    #[tokio::test]
    async fn a_checkpoint_copies_all_of_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(dir.path().join(DATABASE_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePool::connect_with(options).await.unwrap();
        write_pages(&pool).await;
        let pages = checkpoint(&pool, &Mutex::new(())).await.unwrap();
        assert!(pages.unwrap() > 2000, "{pages:?} pages in the WAL");
        sqlx::query("DELETE FROM filler WHERE rowid = 1")
            .execute(&pool)
            .await
            .unwrap();
        let pages = wal_pages(&pool).await;
        assert!(pages < 10, "{pages} pages after the WAL started again");
    }

    /// The store's writers leave checkpoints to the checkpointer, which copies what they
    /// wrote within its period: the next write then starts the WAL again.
    #[tokio::test]
    async fn the_stores_wal_is_copied_by_its_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let (master, _) = MasterKey::generate();
        let store = SqliteStore::open(dir.path(), master).await.unwrap();
        for pool in [&store.writer, &store.pool] {
            let autocheckpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(autocheckpoint, 0);
        }
        write_pages(&store.writer).await;
        tokio::time::sleep(3 * EVERY).await;
        sqlx::query("DELETE FROM filler WHERE rowid = 1")
            .execute(&store.writer)
            .await
            .unwrap();
        let pages = wal_pages(&store.pool).await;
        assert!(
            pages < 10,
            "{pages} pages: the checkpointer did not copy the WAL"
        );
    }
}
