use super::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh, time-ordered identifier.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ValidationError::new("id", "is not a valid identifier"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies an organization for its whole life, across renames and moves.
    OrgId
);
uuid_id!(
    /// Identifies an admin account.
    AdminId
);

/// A shard identifier from config or the operator API: 1 to 32 of `a-z`, `0-9`, `_`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShardId(String);

impl ShardId {
    /// Validates a raw shard id.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "shard",
                "must be 1 to 32 characters of a-z, 0-9, '_' and '-'",
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ShardId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ShardId> for String {
    fn from(value: ShardId) -> Self {
        value.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A database on a shard: `<prefix>_<n>`, n starting at 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseName(String);

impl DatabaseName {
    /// The `n`th database (1-based) for a prefix; the prefix is validated in config.
    pub fn numbered(prefix: &str, n: u32) -> Self {
        Self(format!("{prefix}_{n}"))
    }

    /// The number `n` in `<prefix>_<n>`, if this name has that form for `prefix`.
    pub fn number(&self, prefix: &str) -> Option<u32> {
        self.0
            .strip_prefix(prefix)?
            .strip_prefix('_')?
            .parse()
            .ok()
            .filter(|n| *n >= 1)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids() {
        assert!(ShardId::parse("local").is_ok());
        assert!(ShardId::parse("mongo-1").is_ok());
        assert!(ShardId::parse("").is_err());
        assert!(ShardId::parse("Mongo").is_err());
        assert!(ShardId::parse("a.b").is_err());
    }

    #[test]
    fn database_numbers_round_trip() {
        let d = DatabaseName::numbered("db", 3);
        assert_eq!(d.as_str(), "db_3");
        assert_eq!(d.number("db"), Some(3));
        assert_eq!(d.number("other"), None);
    }

    #[test]
    fn ids_parse_back() {
        let id = OrgId::generate();
        assert_eq!(id.to_string().parse::<OrgId>().unwrap(), id);
        assert!("nope".parse::<OrgId>().is_err());
    }
}
