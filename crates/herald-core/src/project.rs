//! Project ids: every credential and every resource belongs to exactly one project.

use crate::field::FieldError;

/// A project id as it appears in `/v1/{project_id}/…` paths and in `X-Project-Id`.
///
/// Huawei Cloud project ids are 32 hex characters; Herald accepts any 1–64 characters of
/// letters, digits, `-` and `_` so operators can name projects, while keeping ids safe to
/// put in paths, logs and file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(String);

impl ProjectId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let valid = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be 1 to 64 characters of letters, digits, '-' and '_'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ProjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_huawei_ids_and_refuses_path_tricks() {
        assert!(ProjectId::parse("project_id", "70b76e1f2a3b34253880af501cd0c0de").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(ProjectId::parse("project_id", bad).is_err(), "{bad:?}");
        }
    }
}
