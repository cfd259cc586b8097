//! Query strings read by hand, so that a bad parameter is named in the 400.

use herald_core::field::{FieldError, MAX_TEXT_BYTES, check_text};
use herald_store::Page;

/// The decoded `k=v` pairs of a query string; the first value of a repeated key wins.
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    /// Decodes a query string; a value that breaks the text rule of every client string
    /// ([`check_text`]: no NUL, bounded) is refused, naming its parameter.
    pub fn parse(raw: Option<&str>) -> Result<Self, FieldError> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (name, value) in &pairs {
            check_text(name, value, MAX_TEXT_BYTES)?;
        }
        Ok(Self(pairs))
    }

    /// A parameter's value, empty or not.
    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A filter's value; an empty value counts as absent (`?publish_domain=&app=` lists
    /// everything, as SPEC §1 writes it).
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.value(name).filter(|v| !v.is_empty())
    }

    /// An integer, `default` when the parameter is left out. An empty value is not an
    /// integer and is refused like any other (`?offset=`): no client sends one, and a
    /// document that says "integer" must not be contradicted by the server.
    fn integer(
        &self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, FieldError> {
        let Some(raw) = self.value(name) else {
            return Ok(default);
        };
        let rule = || {
            FieldError::new(
                name,
                format!(
                    "must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        };
        let value: u64 = raw.parse().map_err(|_| rule())?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(rule())
        }
    }
}

/// `offset` ≥ 0 (default 0) and `limit` 1–100 (default `default_limit`: 10 in the Live
/// API, 100 in the RTC one, as each documents).
pub fn parse_page(query: &QueryPairs, default_limit: u64) -> Result<Page, FieldError> {
    Ok(Page {
        offset: query.integer("offset", 0, 0..=u64::from(u32::MAX))?,
        limit: query.integer("limit", default_limit, 1..=100)?,
    })
}

/// An id from a path. One that nothing can have (a NUL, which PostgreSQL cannot even
/// compare, or an absurd length) is a 404 for `what` before it reaches the store, the same
/// on every store.
pub fn known_id<'a>(id: &'a str, what: &'static str) -> Result<&'a str, crate::error::ApiError> {
    if id.contains('\0') || id.len() > 128 {
        return Err(crate::error::ApiError::NotFound(what));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(raw: &str) -> Result<Page, FieldError> {
        parse_page(&QueryPairs::parse(Some(raw))?, 10)
    }

    #[test]
    fn defaults_and_bounds() {
        let p = page("").unwrap();
        assert_eq!((p.offset, p.limit), (0, 10));
        let p = page("offset=5&limit=100").unwrap();
        assert_eq!((p.offset, p.limit), (5, 100));
        for (raw, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("offset=-1", "offset"),
            ("limit=x", "limit"),
            ("offset=", "offset"),
            ("offset=0&limit=", "limit"),
            ("limit=+5", "limit"),
        ] {
            assert_eq!(page(raw).unwrap_err().field, field, "{raw}");
        }
    }
}
