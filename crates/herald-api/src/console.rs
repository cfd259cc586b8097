//! The web console (SPEC §8): a few static files compiled into the binary, served at
//! `/console/`, and `/` redirecting there. Everything the console shows or changes goes
//! through the public API with the signed-in token; the files themselves need no
//! credential and hold none.
//!
//! Plain HTML, CSS and JavaScript modules, no framework and no build step: the console
//! is a handful of forms and tables, and a dependency-free page is one less thing to
//! download, audit and keep up to date (see the README).

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file: its bytes and content type.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("../console/index.html"),
    content_type: "text/html; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_str!("../console/console.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_str!("../console/console.css"),
    content_type: "text/css; charset=utf-8",
};

/// Scripts and styles from this origin only, no inline script, no framing: a token typed
/// into the console cannot be read by anything the page did not ship with.
const SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

fn serve(asset: &Asset) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

/// `/`, `/console`, `/console/` and the console's files.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|| async { serve(&INDEX) }))
        .route("/console/console.js", get(|| async { serve(&SCRIPT) }))
        .route("/console/console.css", get(|| async { serve(&STYLE) }))
}

#[cfg(test)]
mod tests {
    /// The console's ready-to-paste snippets set what the documented configurations set
    /// (docs/recording-sources.md quotes crates/herald/tests/media/, which the media tests
    /// run): the same SRS segment length, MediaMTX segment length and `paths:` entry.
    #[test]
    fn engine_snippets_agree_with_the_documented_configurations() {
        let console = include_str!("../console/console.js");
        let srs = include_str!("../../herald/tests/media/srs.conf");
        let mediamtx = include_str!("../../herald/tests/media/mediamtx.yml");
        let setting = |text: &str, name: &str| -> String {
            text.lines()
                .map(str::trim)
                .find_map(|line| line.strip_prefix(name))
                .map(|rest| rest.trim().trim_end_matches(';').to_owned())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        for name in ["dvr_duration", "dvr_plan", "dvr_apply", "dvr_wait_keyframe"] {
            assert_eq!(setting(console, name), setting(srs, name), "{name}");
        }
        for name in [
            "recordSegmentDuration:",
            "recordFormat:",
            "recordDeleteAfter:",
            "record:",
        ] {
            assert_eq!(setting(console, name), setting(mediamtx, name), "{name}");
        }
        assert!(
            console.contains("\npaths:\n  all_others:\n")
                && mediamtx.contains("\npaths:\n  all_others:")
        );
    }
}
