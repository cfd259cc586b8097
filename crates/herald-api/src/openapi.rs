//! The OpenAPI document's shared vocabulary: the rules of `herald_core`'s parsers written
//! as JSON Schema (SPEC §6: `/openapi.json` declares every constraint the server enforces),
//! and the answers every authenticated operation can give.
//!
//! A value a schema allows is accepted and one it forbids is refused: `scripts/check-openapi`
//! holds the server to that. So each pattern is the parser's rule itself, with two
//! exceptions said where they are (callback URLs and `max_pause`: the pattern leaves out
//! forms the parser also takes, which no readable regex could hold). Patterns are ECMA-262, as JSON Schema says, and read the same in Python's `re`.
//! Where a rule counts bytes (SPEC §4), `maxLength` (which counts characters) gives the
//! number of bytes and the description says so: the two agree for ASCII, and JSON Schema
//! has no way to count UTF-8 bytes. Nor can it say that a count must be written `24`
//! rather than `24.0`, which it takes for the same integer.

use utoipa::Modify;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder,
};

/// The characters Rust's `char::is_control` or `char::is_whitespace` holds for (what names,
/// URLs and durations are refused or trimmed for), as the body of a regex class.
const SPACE_OR_CONTROL: &str =
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// `char::is_control` alone.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// `char::is_whitespace` alone: what `str::trim` removes.
const SPACE: &str = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// Every string a client sends: no U+0000 (`herald_core::field::check_text`).
pub const NO_NUL: &str = r"^[^\x00]*$";

/// A name (`app`, `stream`, `stream_name`, `room_id`): no C0 control character and no DEL
/// (`herald_core::field::check_name`).
pub const NAME: &str = r"^[^\x00-\x1f\x7f]*$";

/// `herald_core::config::live::PublishDomain`: dot-separated labels of 1 to 63 letters,
/// digits and `-`, neither first nor last; at most 253 characters.
pub const DOMAIN: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";

/// A string of at most `max_bytes` bytes without U+0000: every string field without a
/// narrower rule.
pub fn text(max_bytes: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(max_bytes))
        .pattern(Some(NO_NUL))
}

/// A string schema that also allows `null`: the parsers read `null` as a field left out.
pub fn nullable_string(schema: ObjectBuilder) -> ObjectBuilder {
    schema.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

/// `herald_core::config::live::PublishDomain`.
pub fn domain() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(253))
        .pattern(Some(DOMAIN))
        .description(Some(
            "A domain name: dot-separated labels of 1 to 63 letters, digits and '-' \
             (not first or last), at most 253 characters; matched case-insensitively.",
        ))
}

/// `herald_core::project::ProjectId`; only the credential's own project gets past
/// authentication (403 otherwise).
pub fn project_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9_-]{1,64}$"))
        .description(Some(
            "The credential's project: 1 to 64 letters, digits, '-' and '_'. Another \
             project's is a 403.",
        ))
}

/// `herald_core::timefmt::parse_utc_seconds`: a real date and time of day, UTC (February
/// 29th in leap years only).
pub const UTC_SECONDS: &str = "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$";

/// A time, `yyyy-mm-ddThh:mm:ssZ` (UTC).
pub fn utc_seconds() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(UTC_SECONDS))
        .description(Some("UTC, yyyy-mm-ddThh:mm:ssZ."))
}

/// A time to filter by, `yyyy-mm-ddThh:mm:ssZ`, or null for no bound.
pub fn utc_seconds_filter() -> ObjectBuilder {
    nullable_string(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(UTC_SECONDS)),
    )
    .description(Some(
        "UTC, yyyy-mm-ddThh:mm:ssZ, on the delivery's creation (since: at or after; until: \
         before); null or left out: no bound.",
    ))
}

/// A domain to filter by, or `""` for any (the SDKs' and SPEC §1's `publish_domain=`).
pub fn domain_filter() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(253))
        .pattern(Some(format!("^$|{DOMAIN}")))
        .description(Some(
            "Only configs of this domain name (case-insensitive); empty: any.",
        ))
}

/// A text to filter by, or `""` for any.
pub fn text_filter() -> ObjectBuilder {
    text(4096).description(Some(
        "Only those with exactly this value; empty: any. At most 4096 bytes.",
    ))
}

/// `offset` of `query::parse_page`.
pub fn offset() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(u32::MAX))
        .description(Some("How many rows to skip; default 0."))
}

/// `limit` of `query::parse_page`, where the default is 10.
pub fn limit_10() -> ObjectBuilder {
    limit().description(Some("How many rows to answer, 1 to 100; default 10."))
}

/// `limit` of `query::parse_page`, where the default is 100 (the RTC API).
pub fn limit_100() -> ObjectBuilder {
    limit().description(Some("How many rows to answer, 1 to 100; default 100."))
}

fn limit() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(100))
}

/// `herald_core::config::live::AppSelector`: `*`, or 1 to 128 characters without `/`,
/// whitespace or control characters.
pub fn app_selector() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some(format!("^[^{SPACE_OR_CONTROL}/]{{1,128}}$")))
        .description(Some(
            "App name, or `*` for any app: 1 to 128 characters without '/', whitespace or \
             control characters. A config for the exact app wins over the `*` one.",
        ))
}

/// The URL rules of `herald_core::config::callback_url::CallbackUrl`, as a regex without
/// anchors: `http://` or `https://` (any case), a host name whose last label starts with a
/// letter (so that it cannot be read as an IPv4 address), an optional port, and a path
/// without whitespace, control characters, `\`, `?` or `#`. The parser also takes IP literals, user
/// information and host names with other characters (WHATWG URL parsing); the pattern
/// leaves them out to stay a regex one can read, so every URL it allows is accepted.
fn url_regex() -> String {
    format!(r"{}(/[^{SPACE_OR_CONTROL}\\?#]*)?", origin_regex())
}

/// `http://` or `https://` (any case), a host name whose last label starts with a letter,
/// an optional port: the part of [`url_regex`] before the path.
fn origin_regex() -> String {
    let label = "[A-Za-z0-9]+(-[A-Za-z0-9]+)*";
    let last_label = "[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*";
    let port = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})";
    format!(r"[Hh][Tt][Tt][Pp][Ss]?://({label}\.)*{last_label}(:{port})?")
}

/// A URL without a path (an object store's endpoint): [`origin_regex`] and an optional `/`.
pub fn origin_url_pattern() -> String {
    format!("^{}/?$", origin_regex())
}

pub const PRIVATE_TARGETS: &str = "A host that is a loopback, private, link-local or metadata \
     address (or `localhost`) is refused unless the server runs with --allow-private-targets.";

/// A URL by the rules of `herald_core::config::callback_url::CallbackUrl`, or `""`.
pub fn url_or_empty() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(1024))
        .pattern(Some(format!("^({})?$", url_regex())))
}

/// A callback URL (`herald_core::config::callback_url::CallbackUrl`), or `""` for none.
pub fn callback_url_or_empty(what_empty_means: &str) -> ObjectBuilder {
    url_or_empty().description(Some(format!(
        "An absolute http:// or https:// URL with a host, no query string and no fragment, \
         at most 1024 bytes; {what_empty_means}. {PRIVATE_TARGETS}"
    )))
}

/// A callback URL (`herald_core::config::callback_url::CallbackUrl`), not empty.
pub fn callback_url() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(1024))
        .pattern(Some(format!("^{}$", url_regex())))
        .description(Some(format!(
            "An absolute http:// or https:// URL with a host, no query string and no \
             fragment, at most 1024 bytes. {PRIVATE_TARGETS}"
        )))
}

/// `herald_core::config::rtc::AppName`: 1 to 64 characters, not all whitespace, no control
/// characters.
pub fn app_name() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some(format!(
            "^[^{CONTROL}]*[^{SPACE_OR_CONTROL}][^{CONTROL}]*$"
        )))
        .description(Some(
            "1 to 64 characters, not all whitespace, without control characters.",
        ))
}

/// `herald_core::source::RecordDir`: an absolute path without a `..` component.
pub fn record_dir() -> ObjectBuilder {
    // A path segment other than `..` (`.` and empty ones are normalised away), without
    // control characters or `herald_core::source::RECORD_DIR_REFUSED`.
    let refused = r#"\x00-\x1f\x7f-\x9f\u2028\u2029"'`$;\\&|<>*?!(){}\[\]%^"#;
    let segment = format!("(\\.\\.[^/{refused}]+|\\.?([^/.{refused}][^/{refused}]*)?)");
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(1024))
        .pattern(Some(format!("^/{segment}(/{segment})*$")))
        .description(Some(
            "Absolute path of the directory the media server records into, without a `..` \
             component, control characters or any of \"'`$;\\&|<>*?!(){}[]%^ (spaces \
             and # are fine); at most 1024 bytes. It must be inside one of the directories the \
             operator allows (`HERALD_RECORD_ROOTS`; none by default, so every source is \
             refused until the operator names one) and must neither contain nor lie inside \
             another project's record_dir: otherwise a 400 naming `record_dir`.",
        ))
}

/// `herald_core::source::parse_max_pause`: whole seconds from 1 s to 1 d. The pattern is
/// the documented form, a number and one of `ms`, `s`, `m`, `h` or `d` (leading zeros and
/// surrounding whitespace allowed), within those bounds; the parser reads humantime's
/// whole grammar (`1h 30m`, `90sec`, `1.5h`), which a regex cannot bound, so the pattern
/// leaves those out and every value it allows is accepted.
pub fn max_pause() -> ObjectBuilder {
    let seconds = "([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)";
    let minutes = "([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)";
    let hours = "([1-9]|1[0-9]|2[0-4])";
    nullable_string(ObjectBuilder::new().pattern(Some(format!(
        "^[{SPACE}]*0*({seconds}(s|000ms)|{minutes}m|{hours}h|1d)[{SPACE}]*$"
    ))))
    .description(Some(
        "How long a stream may stay unpublished before its recording is over: whole seconds \
         from 1s to 1d, as a number and one of the units ms, s, m, h, d (`30s`, `5m`); \
         default `30s`. The server also reads other humantime forms (`1h 30m`, `90sec`).",
    ))
}

/// One of `names` (an enum of a parser's names, e.g. event types).
pub fn one_of_names(names: impl IntoIterator<Item = &'static str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
}

/// A subscription (`herald_core::field::event_types`): an array of at least one of
/// `names`, repeats read once; `null` or left out takes the default.
pub fn subscription(names: impl IntoIterator<Item = &'static str>, default: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(one_of_names(names))
        .min_items(Some(1))
        .description(Some(format!(
            "Event types to be notified of, at least one (a repeat counts once); left out or \
             null: {default}."
        )))
}

/// Adds to every operation what is the same on all of them: an `X-request-id` header on
/// every answer; the rule of the path's `project_id`; and, on the authenticated operations,
/// the `X-Project-Id` header and the answers any request can get (SPEC §1–§4), so that
/// each operation's list is complete: 400 (a body over 1 MiB), 401 (`APIGW.0301`), 403
/// (`APIGW.0302`: another project's path, or an `X-Project-Id` other than the
/// credential's), 408 (a body slower than the body read timeout) and 500.
pub struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if operation.security.is_some() {
                    add_refusals(operation);
                    operation
                        .parameters
                        .get_or_insert_with(Vec::new)
                        .push(project_header());
                }
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.name == "project_id" && parameter.parameter_in == ParameterIn::Path
                    {
                        parameter.schema = Some(project_id().into());
                    }
                }
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response
                            .headers
                            .insert("X-request-id".into(), request_id_header());
                    }
                }
            }
        }
    }
}

/// `X-Project-Id`, which the SDKs send with AK/SK: when present, it must be the
/// credential's project.
fn project_header() -> Parameter {
    ParameterBuilder::new()
        .name("X-Project-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .schema(Some(project_id()))
        .description(Some(
            "The project, as the SDKs send it with AK/SK; one other than the credential's is \
             a 403.",
        ))
        .build()
}

fn add_refusals(operation: &mut Operation) {
    for (status, description) in [
        (
            "400",
            "A field broke a rule (the message names it and the rule), or the body is over \
             1 MiB: `LIVE.100011001` (`RTC.00001003` on /v2 paths)",
        ),
        (
            "401",
            "`APIGW.0301`: missing, malformed, unknown, revoked or expired credentials, or a \
             wrong signature",
        ),
        (
            "403",
            "`APIGW.0302`: the credential is another project's (the path's project_id or \
             X-Project-Id)",
        ),
        (
            "408",
            "The body did not arrive within the server's body read timeout \
             (`HERALD_BODY_READ_TIMEOUT`): `LIVE.100011001` (`RTC.00001003` on /v2 paths)",
        ),
        (
            "500",
            "`LIVE.100011500` (`RTC.00002001` on /v2 paths); the cause is logged, not sent",
        ),
    ] {
        operation
            .responses
            .responses
            .entry(status.into())
            .or_insert_with(|| error_response(description));
    }
}

/// An answer with the error body of both flavours.
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .into()
}

/// `X-request-id: {uuid}-{unix_ms}-{hostname}` (SPEC §1).
fn request_id_header() -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String).pattern(Some(
            r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[0-9]{13}-.+$",
        )))
        .description(Some("`{uuid}-{unix_ms}-{hostname}`, on every answer"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::config::callback_url::CallbackUrl;
    use herald_core::config::live::{AppSelector, PublishDomain};
    use herald_core::config::rtc::AppName;
    use herald_core::source::{RecordDir, parse_max_pause};
    use utoipa::openapi::schema::Object;

    /// Whether a string schema allows `value`: its pattern and its length bounds.
    fn allows(schema: &Object, value: &str) -> bool {
        let chars = value.chars().count();
        let pattern = schema.pattern.as_deref().unwrap_or("");
        schema.min_length.is_none_or(|least| chars >= least)
            && schema.max_length.is_none_or(|most| chars <= most)
            && regex::Regex::new(pattern).unwrap().is_match(value)
    }

    /// The schema and the parser agree on every value.
    fn agree(schema: ObjectBuilder, parses: impl Fn(&str) -> bool, values: &[String]) {
        let schema = schema.build();
        for value in values {
            assert_eq!(
                allows(&schema, value),
                parses(value),
                "{value:?} against {:?}",
                schema.pattern
            );
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn domains() {
        let mut values = strings(&[
            "a", "A.b-c.d", "0.0", "a..b", "-a", "a-", "a.", ".a", "a_b", "é.com", "a b", "",
        ]);
        values.extend([
            "x".repeat(63),
            "x".repeat(64),
            format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61)
            ),
            format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(62)
            ),
        ]);
        agree(domain(), |v| PublishDomain::parse("f", v).is_ok(), &values);
        values.retain(|v| !v.is_empty());
        agree(
            domain_filter(),
            |v| PublishDomain::parse("f", v).is_ok(),
            &values,
        );
        assert!(allows(&domain_filter().build(), ""));
    }

    #[test]
    fn app_selectors_and_names() {
        let mut values = strings(&[
            "*",
            "**",
            "live",
            "a/b",
            "a b",
            "a\tb",
            "é",
            "a\u{2000}b",
            "a\u{85}",
            "a\u{a0}",
            "a\u{3000}",
            "",
            "\u{7f}",
        ]);
        values.extend(["x".repeat(128), "x".repeat(129), "é".repeat(128)]);
        agree(
            app_selector(),
            |v| AppSelector::parse("f", v).is_ok(),
            &values,
        );
        let mut values = strings(&[
            "", " ", "   ", "a b", " a ", "\u{3000}", "\u{a0}x", "a\nb", "\t", "\u{85}a", "é",
        ]);
        values.extend(["é".repeat(64), "é".repeat(65)]);
        agree(app_name(), |v| AppName::parse("f", v).is_ok(), &values);
    }

    #[test]
    fn record_dirs() {
        let values = strings(&[
            "/", "/a/b", "//a", "/./a", "/a/./", "/...", "/..a", "/a..", "/a/../b", "/a/..", "/..",
            "/../", "a", "./a", "", "/a\0b",
        ]);
        agree(record_dir(), |v| RecordDir::parse("f", v).is_ok(), &values);
    }

    #[test]
    fn every_max_pause_the_pattern_allows_is_accepted() {
        let schema = max_pause().build();
        for pause in [
            "1s",
            "30s",
            "86400s",
            "1000ms",
            "86400000ms",
            "1m",
            "1440m",
            "24h",
            "1d",
            " 5s ",
            "\u{3000}5s\u{85}",
            "05s",
            "0001d",
        ] {
            assert!(allows(&schema, pause), "{pause:?}");
            assert!(parse_max_pause("f", pause).is_ok(), "{pause:?}");
        }
        for pause in [
            "0s",
            "86401s",
            "1500ms",
            "999ms",
            "86401000ms",
            "1441m",
            "25h",
            "0h",
            "2d",
            "0d",
            "s",
            "5",
            "-5s",
            "",
            "1w",
        ] {
            assert!(!allows(&schema, pause), "{pause:?}");
            assert!(parse_max_pause("f", pause).is_err(), "{pause:?}");
        }
    }

    #[test]
    fn every_url_the_pattern_allows_is_accepted() {
        let schema = url_or_empty().build();
        for url in [
            "http://a",
            "HTTPS://cb.example.com:8443/x/y",
            "http://a-b.c-d/%zz<>{}|^`\"",
            "hTtP://x.y.z:0/",
            "http://a:65535",
            "http://1a.b2/x",
        ] {
            assert!(allows(&schema, url), "{url}");
            assert!(CallbackUrl::parse("f", url, true).is_ok(), "{url}");
        }
        for url in [
            "ftp://a",
            "http://",
            "http:///a",
            "http://a.1",
            "http://a:65536",
            "http://a/b?c",
            "http://a/b#c",
            "http://a/b c",
            "http://a\\b",
            "http://xn--a",
            "http://a..b",
        ] {
            assert!(!allows(&schema, url), "{url}");
        }
        assert!(allows(&schema, ""));
    }
}
