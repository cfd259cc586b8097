//! `herald deliveries …`: the delivery log from the command line.

use herald_core::project::ProjectId;
use herald_store::{DeliveryStatus, RetryFilter, Store};
use time::OffsetDateTime;

/// `--since`/`--until`: a UTC time (`yyyy-mm-ddThh:mm:ssZ`) or how long ago (`2h`).
pub fn parse_time_arg(
    flag: &str,
    raw: &str,
    now: OffsetDateTime,
) -> anyhow::Result<OffsetDateTime> {
    if let Ok(at) = herald_core::timefmt::parse_utc_seconds(flag, raw) {
        return Ok(at);
    }
    let ago = herald_core::duration::parse_duration(flag, raw).map_err(|_| {
        anyhow::anyhow!(
            "{flag}: must be a UTC time (yyyy-mm-ddThh:mm:ssZ) or how long ago (e.g. 2h)"
        )
    })?;
    Ok(time::Duration::try_from(ago)
        .ok()
        .and_then(|ago| now.checked_sub(ago))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// Which deliveries `herald deliveries retry` re-queues.
pub struct RetryArgs {
    pub status: DeliveryStatus,
    pub since: Option<String>,
    pub until: Option<String>,
    pub publish_domain: Option<String>,
    pub app: Option<String>,
    pub app_id: Option<String>,
}

/// Re-queues everything that matches, a bounded batch at a time (as the API does per
/// request), and says how many. A running server on PostgreSQL is woken by the store; on
/// the embedded store its worker finds them at its next poll (within a second or so).
pub async fn retry(
    store: &dyn Store,
    project: &ProjectId,
    args: RetryArgs,
    json: bool,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let time = |flag: &str, raw: &Option<String>| {
        raw.as_deref()
            .map(|raw| parse_time_arg(flag, raw, now))
            .transpose()
    };
    let filter = RetryFilter {
        status: args.status,
        publish_domain: args.publish_domain,
        app: args.app,
        app_id: args.app_id,
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
    };
    let mut queued = 0;
    loop {
        let done = store
            .retry_matching(project, &filter, OffsetDateTime::now_utc())
            .await?;
        queued += done.queued;
        if !done.more {
            break;
        }
    }
    if json {
        println!("{}", serde_json::json!({ "queued": queued }));
    } else {
        println!("re-queued {queued} deliveries of project {project}");
    }
    Ok(())
}

/// Replays `[since, until)` to a Live config or an RTC app's record callback and says how
/// many deliveries it queued.
pub async fn replay(
    store: &dyn Store,
    project: &ProjectId,
    target: herald_store::ReplayTarget,
    since: &str,
    until: &str,
    json: bool,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let since = parse_time_arg("--since", since, now)?;
    let until = parse_time_arg("--until", until, now)?;
    let queued = match store.replay(project, &target, since, until, now).await? {
        herald_store::Replayed::Queued(n) => n,
        herald_store::Replayed::NotFound => {
            anyhow::bail!("project {project} has no such config or app")
        }
        herald_store::Replayed::TooMany => anyhow::bail!(
            "the range holds more than {} events; replay it in parts",
            herald_store::REPLAY_MOST
        ),
    };
    if json {
        println!("{}", serde_json::json!({ "queued": queued }));
    } else {
        println!("queued {queued} deliveries to replay");
    }
    Ok(())
}
