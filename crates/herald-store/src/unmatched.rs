//! Why accepted events cause no delivery: read from the configs as they are now, for the
//! ingest answer and the logs (an event that matches nothing is said to, not dropped in
//! silence).

use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::matching::{MatchCandidate, why_unmatched};
use herald_core::project::ProjectId;

use crate::{Accepted, LiveConfigFilter, Page, Store, StoreError};

/// An event's domain, app and type: events that share them share their reason.
type Scope<'a> = (&'a str, &'a str, &'a str);

/// For each accepted Live event, in order: why it causes no delivery, or `None` (it causes
/// some). Only events with 0 deliveries cost a look at the configs: two indexed reads, the
/// event's app and `*`, once per domain and app of the batch.
pub async fn why_live_events_unmatched(
    store: &dyn Store,
    project: &ProjectId,
    events: &[(EventId, LiveEvent)],
    accepted: &[Accepted],
) -> Result<Vec<Option<String>>, StoreError> {
    let mut seen: Vec<(Scope<'_>, Option<String>)> = Vec::new();
    let mut notes = Vec::with_capacity(accepted.len());
    for ((_, event), answer) in events.iter().zip(accepted) {
        if answer.deliveries > 0 {
            notes.push(None);
            continue;
        }
        let key = (
            event.publish_domain.as_str(),
            event.app.as_str(),
            event.event_type.as_str(),
        );
        if let Some((_, note)) = seen.iter().find(|(k, _)| *k == key) {
            notes.push(note.clone());
            continue;
        }
        let mut candidates = Vec::new();
        for app in [event.app.as_str(), "*"] {
            let filter = LiveConfigFilter {
                publish_domain: Some(event.publish_domain.clone()),
                app: Some(app.to_owned()),
            };
            let page = Page {
                offset: 0,
                limit: 1,
            };
            let (_, configs) = store.list_live_configs(project, &filter, page).await?;
            candidates.extend(configs.into_iter().map(|c| MatchCandidate {
                app: c.spec.app,
                subscription: c.spec.subscription,
                has_url: c.spec.notify_callback_url.is_some(),
                target: (),
            }));
        }
        let note = why_unmatched(
            candidates,
            &event.publish_domain,
            &event.app,
            event.event_type,
        )
        // A config that matches now came after the event (or the event was a repeat).
        .or_else(|| Some("0 deliveries: no config matched when the event was accepted".to_owned()));
        seen.push((key, note.clone()));
        notes.push(note);
    }
    Ok(notes)
}
