//! Reading an untrusted JSON object field by field.
//!
//! Request bodies are parsed into a generic JSON map first and then read through
//! [`JsonObject`], rather than straight into a serde struct, because serde's errors
//! ("invalid type: integer, expected a string at line 1 column 9") do not name the field,
//! and every refusal Herald sends must say which field broke which rule.

use serde_json::{Map, Value};

/// A refused input: the field at fault and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct FieldError {
    /// The field's name as the client spelled it (`body` for the request body as a whole).
    pub field: String,
    /// The rule, phrased so that `"{field}: {rule}"` reads as a sentence.
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// The rule every string from a client obeys, on every store: no U+0000 (PostgreSQL cannot
/// store it in text, SQLite can; refusing it everywhere keeps the stores' answers equal),
/// and at most `max_bytes` bytes.
pub fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(FieldError::new(field, "must not contain U+0000 (NUL)"));
    }
    if value.len() > max_bytes {
        return Err(FieldError::new(
            field,
            format!("must be at most {max_bytes} bytes"),
        ));
    }
    Ok(())
}

/// [`check_text`] for a name (a Live `app` or `stream`, an RTC `stream_name` or
/// `room_id`): no control character either (C0 and DEL), since names are printed in logs
/// and terminals (`herald listen`), where a newline or an escape would forge output.
pub fn check_name(field: &str, value: &str, max_bytes: usize) -> Result<(), FieldError> {
    check_text(field, value, max_bytes)?;
    if value.chars().any(|c| c.is_ascii_control()) {
        return Err(FieldError::new(
            field,
            "must not contain control characters (U+0000 to U+001F, U+007F)",
        ));
    }
    Ok(())
}

/// The longest string field a client may send where no narrower rule applies.
pub const MAX_TEXT_BYTES: usize = 4096;

/// A subscription's event types read by `parse`: never empty, each once, in the order
/// given. Both flavours' subscriptions are read this way.
pub fn event_types<T: PartialEq>(
    field: &str,
    raw: &[&str],
    parse: impl Fn(&str, &str) -> Result<T, FieldError>,
) -> Result<Vec<T>, FieldError> {
    let mut types = Vec::with_capacity(raw.len());
    for name in raw {
        let t = parse(field, name)?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.is_empty() {
        return Err(FieldError::new(field, "must name at least one event type"));
    }
    Ok(types)
}

/// A JSON object received from a client.
pub struct JsonObject(Map<String, Value>);

impl JsonObject {
    /// Parses a request body that must be one JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, FieldError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(FieldError::new("body", "must be a JSON object")),
            Err(e) => Err(FieldError::new("body", format!("is not valid JSON ({e})"))),
        }
    }

    /// A string field that may be absent; `null` counts as absent. It obeys [`check_text`]
    /// with [`MAX_TEXT_BYTES`]; narrower rules are the caller's.
    pub fn optional_str(&self, field: &str) -> Result<Option<&str>, FieldError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                check_text(field, s, MAX_TEXT_BYTES)?;
                Ok(Some(s))
            }
            Some(_) => Err(FieldError::new(field, "must be a string")),
        }
    }

    /// A string field that must be present and not empty.
    pub fn required_str(&self, field: &str) -> Result<&str, FieldError> {
        match self.optional_str(field)? {
            None => Err(FieldError::new(field, "is required")),
            Some("") => Err(FieldError::new(field, "must not be empty")),
            Some(s) => Ok(s),
        }
    }

    /// A boolean field that may be absent; `null` counts as absent.
    pub fn optional_bool(&self, field: &str) -> Result<Option<bool>, FieldError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(FieldError::new(field, "must be true or false")),
        }
    }

    /// A nested object that may be absent; `null` counts as absent.
    pub fn optional_object(&self, field: &str) -> Result<Option<Self>, FieldError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Self(map.clone()))),
            Some(_) => Err(FieldError::new(field, "must be a JSON object")),
        }
    }

    /// An array of strings that may be absent; `null` counts as absent.
    pub fn optional_str_array(&self, field: &str) -> Result<Option<Vec<&str>>, FieldError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let s = item
                        .as_str()
                        .ok_or_else(|| FieldError::new(field, "must be an array of strings"))?;
                    check_text(field, s, MAX_TEXT_BYTES)?;
                    Ok(s)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(FieldError::new(field, "must be an array of strings")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field_and_the_rule() {
        let obj = JsonObject::parse(br#"{"a": 1, "b": null, "c": ["x", 2], "e": ""}"#).unwrap();
        assert_eq!(
            obj.optional_str("a").unwrap_err().to_string(),
            "a: must be a string"
        );
        assert_eq!(obj.optional_str("b").unwrap(), None);
        assert_eq!(
            obj.required_str("b").unwrap_err().to_string(),
            "b: is required"
        );
        assert_eq!(
            obj.required_str("e").unwrap_err().to_string(),
            "e: must not be empty"
        );
        assert_eq!(
            obj.optional_str_array("c").unwrap_err().to_string(),
            "c: must be an array of strings"
        );
    }

    #[test]
    fn refuses_nul_and_overlong_strings() {
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let body = format!(r#"{{"a": "x\u0000y", "b": ["ok", "\u0000"], "c": "{long}"}}"#);
        let obj = JsonObject::parse(body.as_bytes()).unwrap();
        assert_eq!(
            obj.optional_str("a").unwrap_err().to_string(),
            "a: must not contain U+0000 (NUL)"
        );
        assert_eq!(obj.optional_str_array("b").unwrap_err().field, "b");
        assert_eq!(
            obj.optional_str("c").unwrap_err().to_string(),
            "c: must be at most 4096 bytes"
        );
    }

    #[test]
    fn refuses_bodies_that_are_not_objects() {
        assert_eq!(JsonObject::parse(b"[1]").err().unwrap().field, "body");
        assert_eq!(JsonObject::parse(b"{").err().unwrap().field, "body");
    }
}
