//! How many callback configs, RTC apps and recording sources one project may have, each
//! counted apart (`HERALD_MAX_PER_PROJECT`): one tenant cannot fill the store, or make every
//! match and list of its own slow. A create past the cap is a 400 that names the cap.
//!
//! The count is taken before the insert, outside its transaction: creates of one project
//! that race can pass the cap by at most as many as run at once, which still bounds it.

use herald_core::field::FieldError;
use herald_core::project::ProjectId;
use herald_store::{LiveConfigFilter, Page, Store};

use crate::error::ApiError;

/// What is counted against the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    LiveConfigs,
    RtcApps,
    Sources,
}

impl Counted {
    fn plural(self) -> &'static str {
        match self {
            Self::LiveConfigs => "callback configs",
            Self::RtcApps => "apps",
            Self::Sources => "recording sources",
        }
    }

    async fn count(self, store: &dyn Store, project: &ProjectId) -> Result<u64, ApiError> {
        // A page of none: the totals are counted apart from the page.
        let none = Page {
            offset: 0,
            limit: 0,
        };
        let total = match self {
            Self::LiveConfigs => {
                let all = LiveConfigFilter::default();
                store.list_live_configs(project, &all, none).await?.0
            }
            Self::RtcApps => store.list_rtc_apps(project, none).await?.0,
            Self::Sources => store.list_sources(project, none).await?.0,
        };
        Ok(total)
    }
}

/// Ok when `project` may have one more of `what`; a 400 naming the cap when not.
pub async fn ensure_room(
    store: &dyn Store,
    project: &ProjectId,
    what: Counted,
    max_per_project: u64,
) -> Result<(), ApiError> {
    let existing = what.count(store, project).await?;
    if existing < max_per_project {
        return Ok(());
    }
    Err(FieldError::new(
        "project_id",
        format!(
            "has {existing} {}, the most one project may have (HERALD_MAX_PER_PROJECT = \
             {max_per_project}); delete one first",
            what.plural()
        ),
    )
    .into())
}
