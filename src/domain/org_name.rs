use super::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest organization name accepted, in characters, after trimming.
pub const MAX_ORG_NAME_CHARS: usize = 64;

/// An organization's display name: trimmed, 1 to 64 characters of ASCII letters, digits,
/// spaces, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgName(String);

impl OrgName {
    /// Validates and trims a raw name.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "organization_name";
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new(FIELD, "must not be empty"));
        }
        if trimmed.chars().count() > MAX_ORG_NAME_CHARS {
            return Err(ValidationError::new(
                FIELD,
                format!("must be at most {MAX_ORG_NAME_CHARS} characters"),
            ));
        }
        if let Some(bad) = trimmed
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_')))
        {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "may contain only letters, digits, spaces, '-' and '_' (found {:?})",
                    bad
                ),
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uniqueness key: lowercase, runs of whitespace collapsed to one space.
    pub fn normalized(&self) -> NormalizedOrgName {
        let lower = self.0.to_ascii_lowercase();
        NormalizedOrgName(lower.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The tenant collection this name maps to: `org_` + the normalized name with spaces and
    /// `-` turned into `_`. Deterministic, and always a valid MongoDB collection name.
    pub fn collection_name(&self) -> CollectionName {
        let slug: String = self
            .normalized()
            .0
            .chars()
            .map(|c| if c == ' ' || c == '-' { '_' } else { c })
            .collect();
        CollectionName(format!("org_{slug}"))
    }
}

impl TryFrom<String> for OrgName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OrgName> for String {
    fn from(value: OrgName) -> Self {
        value.0
    }
}

impl fmt::Display for OrgName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The case- and whitespace-insensitive form of an [`OrgName`], used as its unique key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NormalizedOrgName(String);

impl NormalizedOrgName {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The start of an organization name, for searching by prefix: at most 64 of the characters
/// a name may hold, compared in normalized form (lowercase, leading spaces dropped, runs of
/// spaces as one). The empty prefix matches every name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePrefix(String);

impl NamePrefix {
    /// Validates and normalizes a raw prefix.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "prefix";
        if raw.chars().count() > MAX_ORG_NAME_CHARS {
            return Err(ValidationError::new(
                FIELD,
                format!("must be at most {MAX_ORG_NAME_CHARS} characters"),
            ));
        }
        if raw
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_')))
        {
            return Err(ValidationError::new(
                FIELD,
                "may contain only letters, digits, spaces, '-' and '_'",
            ));
        }
        let mut out = String::with_capacity(raw.len());
        for c in raw.trim_start().chars() {
            if !(c == ' ' && out.ends_with(' ')) {
                out.push(c.to_ascii_lowercase());
            }
        }
        Ok(Self(out))
    }

    /// The normalized prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Prefix of the collections that keep deleted organizations' data.
const TOMBSTONE_PREFIX: &str = "deleted_";

/// A tenant collection name, derived from an [`OrgName`]; unique across the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CollectionName(String);

impl CollectionName {
    /// The collection name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where an orphaned collection found under this name is moved aside: a name no
    /// organization can map to (it lacks the `org_` prefix), unique by `stamp`.
    pub fn quarantine(&self, stamp: i64) -> String {
        format!("quarantine_{}_{stamp}", &self.0[4..])
    }

    /// Where a deleted organization's data is kept until restored or purged: a name no
    /// organization can map to (it lacks the `org_` prefix), unique to the organization id.
    pub fn tombstone(org: super::OrgId) -> Self {
        Self(format!(
            "{TOMBSTONE_PREFIX}{}",
            org.to_string().replace('-', "")
        ))
    }

    /// Whether a name read back from a store is a deleted organization's kept data.
    pub fn is_tombstone(raw: &str) -> bool {
        raw.strip_prefix(TOMBSTONE_PREFIX)
            .is_some_and(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit()))
    }

    /// Accepts a name read back from a store: only names this type could have produced.
    pub fn from_stored(raw: &str) -> Option<Self> {
        let slug = raw.strip_prefix("org_")?;
        let valid = !slug.is_empty()
            && slug.len() <= MAX_ORG_NAME_CHARS
            && slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        valid.then(|| Self(raw.to_owned()))
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compare_as_normalized_names_do() {
        let p = NamePrefix::parse("  Acme   C").unwrap();
        assert_eq!(p.as_str(), "acme c");
        let name = OrgName::parse("ACME  Corp").unwrap().normalized();
        assert!(name.as_str().starts_with(p.as_str()));
        assert_eq!(NamePrefix::parse("").unwrap().as_str(), "");
        assert_eq!(NamePrefix::parse("ab  ").unwrap().as_str(), "ab ");
        for bad in ["a$", "a\tb", "é", &"a".repeat(65)] {
            assert!(NamePrefix::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn trims_and_accepts_allowed_characters() {
        let n = OrgName::parse("  Acme Corp-1_x ").unwrap();
        assert_eq!(n.as_str(), "Acme Corp-1_x");
    }

    #[test]
    fn rejects_empty_long_and_special() {
        assert!(OrgName::parse("   ").is_err());
        assert!(OrgName::parse(&"a".repeat(65)).is_err());
        assert!(OrgName::parse(&"a".repeat(64)).is_ok());
        for bad in ["a$b", "a\0b", "a.b", "a/b", "é", "a\tb"] {
            assert!(OrgName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn normalization_ignores_case_and_whitespace_runs() {
        let a = OrgName::parse("Acme   Corp").unwrap();
        let b = OrgName::parse("acme corp").unwrap();
        assert_eq!(a.normalized(), b.normalized());
    }

    #[test]
    fn collection_name_is_deterministic_and_mongo_safe() {
        let a = OrgName::parse("Acme-Corp").unwrap().collection_name();
        let b = OrgName::parse("acme_corp").unwrap().collection_name();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "org_acme_corp");
        assert!(CollectionName::from_stored(a.as_str()).is_some());
        assert!(CollectionName::from_stored("system.users").is_none());
    }

    #[test]
    fn tombstone_names_belong_to_no_organization() {
        let t = CollectionName::tombstone(crate::domain::OrgId::generate());
        assert!(CollectionName::is_tombstone(t.as_str()));
        assert!(CollectionName::from_stored(t.as_str()).is_none());
        assert!(!CollectionName::is_tombstone("org_deleted_x"));
    }
}
