//! Turns to read a finished file (ffprobe), shared fairly across projects and sources.
//!
//! ffprobe may take only a few cores' worth of turns, or the hooks media servers wait for
//! would starve. A single queue for those turns is not enough: one project with many
//! streams (or one slow file per stream) would fill it, and every other project would wait
//! behind all of its files. So a turn is taken in three queues, each first in, first out:
//! the source's (one file per source at a time), then the project's (one per project),
//! then the server's ([`FileTurns::new`]'s `at_once`). Each queue below holds at most one
//! waiter per member of the level above, so the server's queue goes round the projects and
//! a project's goes round its sources: a project never waits for more than one file of
//! each other project.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The turns of one server.
pub struct FileTurns {
    /// The server's turns.
    all: Arc<Semaphore>,
    /// One turn per source and one per project, by `source:{id}` and `project:{id}`;
    /// entries nobody holds or waits for are dropped as others are added.
    queues: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A turn to read one file; given back when dropped (a panic included).
pub struct FileTurn {
    _server: Option<OwnedSemaphorePermit>,
    _project: Option<OwnedSemaphorePermit>,
    _source: Option<OwnedSemaphorePermit>,
}

impl FileTurns {
    pub fn new(at_once: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(at_once.max(1))),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a turn to read a file of `source`, of `project`.
    pub async fn take(&self, project: &str, source: &str) -> FileTurn {
        // The semaphores are never closed: `ok()` only keeps a failed acquire from
        // being a panic.
        let source = self
            .queue(format!("source:{source}"))
            .acquire_owned()
            .await
            .ok();
        let project = self
            .queue(format!("project:{project}"))
            .acquire_owned()
            .await
            .ok();
        let server = Arc::clone(&self.all).acquire_owned().await.ok();
        FileTurn {
            _server: server,
            _project: project,
            _source: source,
        }
    }

    /// The one-turn queue of `key`, made when first needed.
    fn queue(&self, key: String) -> Arc<Semaphore> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Nobody but the map holds these: nobody has their turn or waits for it.
        queues.retain(|_, queue| Arc::strong_count(queue) > 1);
        Arc::clone(
            queues
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(1))),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// With one server-wide queue of two turns, project A's two slow files held both and
    /// project B waited for them. Now A holds one, and B's file is read at once.
    #[tokio::test]
    async fn one_project_cannot_take_every_turn() {
        let turns = Arc::new(FileTurns::new(2));
        let a1 = turns.take("a", "s1").await;
        // A's second file, of another source, waits for A's first...
        let waiting = {
            let turns = Arc::clone(&turns);
            tokio::spawn(async move { turns.take("a", "s2").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ...while B takes the turn that is free, however many files A has queued.
        let more_of_a: Vec<_> = (0..5)
            .map(|n| {
                let turns = Arc::clone(&turns);
                tokio::spawn(async move { turns.take("a", &format!("more{n}")).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let b = tokio::time::timeout(Duration::from_secs(5), turns.take("b", "s3"))
            .await
            .expect("B gets a turn while A holds one");
        // A third project waits for a turn, and comes before A's queued files.
        let c = Arc::clone(&turns);
        let mut c = Box::pin(async move { c.take("c", "s4").await });
        assert!(c.as_mut().now_or_never().is_none());
        drop(b);
        let _c = tokio::time::timeout(Duration::from_secs(5), c)
            .await
            .expect("C takes B's turn before A's queued files");
        assert!(!waiting.is_finished());
        drop(a1);
        let _a2 = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("A's next file goes once its first is done")
            .unwrap();
        for task in more_of_a {
            task.abort();
        }
    }
}
