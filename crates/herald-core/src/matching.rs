//! Matching: which config, if any, an accepted event is delivered to.
//!
//! - Live (SPEC §1): [`select_config`] among the configs of the event's domain.
//! - RTC (SPEC §2): [`select_rtc_callback`], an app's one record callback.

use crate::config::live::{AppSelector, Subscription};
use crate::config::rtc::RtcSubscription;
use crate::event::live::LiveEventType;
use crate::event::rtc::RtcEventType;

/// What matching needs to know of one of the project's configs for the event's domain.
#[derive(Debug, Clone)]
pub struct MatchCandidate<T> {
    pub app: AppSelector,
    pub subscription: Subscription,
    pub has_url: bool,
    /// What the caller wants back for the chosen config (e.g. its id).
    pub target: T,
}

/// SPEC §1: among the configs of the event's domain, the one whose app is the event's
/// app, or only if there is none, the `*` one; the event goes out only if that config
/// subscribes to its type and has a URL.
pub fn select_config<T>(
    candidates: Vec<MatchCandidate<T>>,
    app: &str,
    event_type: LiveEventType,
) -> Option<T> {
    let chosen = config_for_app(candidates, app)?;
    (chosen.has_url && chosen.subscription.event_types().contains(&event_type))
        .then_some(chosen.target)
}

/// The config of the event's app, or only if there is none, the `*` one.
fn config_for_app<T>(candidates: Vec<MatchCandidate<T>>, app: &str) -> Option<MatchCandidate<T>> {
    let (exact, wildcard): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .filter(|c| c.app == AppSelector::Any || c.app.as_str() == app)
        .partition(|c| c.app != AppSelector::Any);
    exact
        .into_iter()
        .next()
        .or_else(|| wildcard.into_iter().next())
}

/// Why an event goes nowhere, in the words the ingest answer and the logs use (e.g. "0
/// deliveries: no config subscribes to RECORD_START for push.example.com/live"); `None`
/// when [`select_config`] would choose a config.
pub fn why_unmatched<T>(
    candidates: Vec<MatchCandidate<T>>,
    publish_domain: &str,
    app: &str,
    event_type: LiveEventType,
) -> Option<String> {
    let scope = format!("{publish_domain}/{app}");
    let Some(chosen) = config_for_app(candidates, app) else {
        return Some(format!(
            "0 deliveries: no config for {scope} (none with app \"{app}\" or \"*\")"
        ));
    };
    if !chosen.subscription.event_types().contains(&event_type) {
        return Some(format!(
            "0 deliveries: no config subscribes to {} for {scope} (its config subscribes to {}; \
             add the type to notify_event_subscription)",
            event_type.as_str(),
            chosen.subscription.names().join(", ")
        ));
    }
    if !chosen.has_url {
        return Some(format!(
            "0 deliveries: the config for {scope} has no notify_callback_url"
        ));
    }
    None
}

/// SPEC §2: an app has at most one record callback; the event goes there only if the
/// callback subscribes to its type. `callback` is the app's callback, if it has one, with
/// its subscription.
pub fn select_rtc_callback<T>(
    callback: Option<(&RtcSubscription, T)>,
    event_type: RtcEventType,
) -> Option<T> {
    callback
        .filter(|(subscription, _)| subscription.contains(event_type))
        .map(|(_, target)| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event that matches nothing is said to, with the reason.
    #[test]
    fn an_unmatched_event_is_told_why() {
        let config = |app: &str, types: &[&str], has_url: bool| MatchCandidate {
            app: AppSelector::parse("app", app).unwrap(),
            subscription: Subscription::parse("s", types).unwrap(),
            has_url,
            target: (),
        };
        let start = LiveEventType::parse("event_type", "RECORD_START").unwrap();
        let why = |candidates| why_unmatched(candidates, "push.example.com", "live", start);
        assert_eq!(
            why(vec![config("*", &["RECORD_FILE_COMPLETE"], true)]).unwrap(),
            "0 deliveries: no config subscribes to RECORD_START for push.example.com/live \
             (its config subscribes to RECORD_FILE_COMPLETE; add the type to \
             notify_event_subscription)"
        );
        assert!(
            why(vec![])
                .unwrap()
                .starts_with("0 deliveries: no config for push.example.com/live")
        );
        assert!(
            why(vec![config("live", &["RECORD_START"], false)])
                .unwrap()
                .contains("no notify_callback_url")
        );
        assert_eq!(why(vec![config("live", &["RECORD_START"], true)]), None);
    }

    #[test]
    fn exact_app_wins_over_wildcard_and_subscription_filters() {
        let candidate = |app: &str, subscription: &[&str], has_url: bool, target: &'static str| {
            MatchCandidate {
                app: AppSelector::parse("app", app).unwrap(),
                subscription: Subscription::parse("s", subscription).unwrap(),
                has_url,
                target,
            }
        };
        let both = || {
            vec![
                candidate("*", &["RECORD_OVER", "RECORD_FILE_COMPLETE"], true, "any"),
                candidate("live", &["RECORD_FILE_COMPLETE"], true, "live"),
            ]
        };
        assert_eq!(
            select_config(both(), "live", LiveEventType::RecordFileComplete),
            Some("live")
        );
        assert_eq!(
            select_config(both(), "vod", LiveEventType::RecordFileComplete),
            Some("any")
        );
        // The exact config decides even when it does not subscribe: no fallback to `*`.
        assert_eq!(
            select_config(both(), "live", LiveEventType::RecordOver),
            None
        );
        assert_eq!(
            select_config(
                vec![candidate("live", &["RECORD_OVER"], false, "x")],
                "live",
                LiveEventType::RecordOver
            ),
            None
        );
        assert_eq!(
            select_config(
                Vec::<MatchCandidate<&str>>::new(),
                "live",
                LiveEventType::RecordOver
            ),
            None
        );
    }

    #[test]
    fn rtc_callback_gets_only_the_types_it_subscribes_to() {
        let subscription = RtcSubscription::parse("s", &["RECORD_FILE_COMPLETE"]).unwrap();
        assert_eq!(
            select_rtc_callback(
                Some((&subscription, "cb")),
                RtcEventType::RecordFileComplete
            ),
            Some("cb")
        );
        assert_eq!(
            select_rtc_callback(
                Some((&subscription, "cb")),
                RtcEventType::CloudRecordServerOver
            ),
            None
        );
        assert_eq!(
            select_rtc_callback::<&str>(None, RtcEventType::RecordFileComplete),
            None
        );
    }
}
