//! Validated domain types. Once a value has one of these types it is known to be valid, so the
//! rest of the gateway never re-checks names, emails, passwords or identifiers.

mod email;
mod ids;
mod index;
mod org_name;
mod password;
pub mod whole;

pub use email::Email;
pub use ids::{AdminId, DatabaseName, OrgId, ShardId};
pub use index::{
    IndexField, IndexKeys, IndexName, ID_INDEX_NAME, MAX_INDEX_FIELDS, MAX_INDEX_NAME_BYTES,
};
pub use org_name::{CollectionName, NamePrefix, NormalizedOrgName, OrgName, MAX_ORG_NAME_CHARS};
pub use password::Password;

/// Why a value was rejected; the message is shown to API clients as the problem `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The input field that failed validation (e.g. `organization_name`).
    pub field: &'static str,
    /// A human-readable reason.
    pub message: String,
}

impl ValidationError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
