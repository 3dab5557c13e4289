//! Audit events: an append-only log of what changed, by whom. Each event has a time-ordered id
//! (a UUIDv7: its text sorts by creation time, to the millisecond), so the log is read in id
//! order and paged by id. Details never hold a secret (no password, hash or token).

use crate::domain::{AdminId, OrgId};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// An organization was created (with its first admin).
    #[serde(rename = "organization.created")]
    OrganizationCreated,
    /// An organization's admin email changed through `PUT /org/update`.
    #[serde(rename = "organization.updated")]
    OrganizationUpdated,
    /// An organization was renamed (its data moved to the new collection).
    #[serde(rename = "organization.renamed")]
    OrganizationRenamed,
    /// An organization was deleted.
    #[serde(rename = "organization.deleted")]
    OrganizationDeleted,
    /// A deleted organization was restored (by an operator).
    #[serde(rename = "organization.restored")]
    OrganizationRestored,
    /// A deleted organization's kept data was dropped (by an operator, or by the sweeper
    /// after its retention).
    #[serde(rename = "organization.purged")]
    OrganizationPurged,
    /// An admin was added.
    #[serde(rename = "admin.created")]
    AdminCreated,
    /// An admin was removed.
    #[serde(rename = "admin.deleted")]
    AdminDeleted,
    /// An admin logged in.
    #[serde(rename = "admin.login_succeeded")]
    AdminLoginSucceeded,
    /// A login for an existing admin's email failed (wrong password).
    #[serde(rename = "admin.login_failed")]
    AdminLoginFailed,
    /// An admin changed its password.
    #[serde(rename = "admin.password_changed")]
    AdminPasswordChanged,
    /// An operator set or removed an organization's rate-limit override.
    #[serde(rename = "limits.changed")]
    LimitsChanged,
    /// A tenant's data moved to another location (a move finished).
    #[serde(rename = "tenant.moved")]
    TenantMoved,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 13] = [
        EventType::OrganizationCreated,
        EventType::OrganizationUpdated,
        EventType::OrganizationRenamed,
        EventType::OrganizationDeleted,
        EventType::OrganizationRestored,
        EventType::OrganizationPurged,
        EventType::AdminCreated,
        EventType::AdminDeleted,
        EventType::AdminLoginSucceeded,
        EventType::AdminLoginFailed,
        EventType::AdminPasswordChanged,
        EventType::LimitsChanged,
        EventType::TenantMoved,
    ];

    /// The name in the API (`organization.created`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrganizationCreated => "organization.created",
            Self::OrganizationUpdated => "organization.updated",
            Self::OrganizationRenamed => "organization.renamed",
            Self::OrganizationDeleted => "organization.deleted",
            Self::OrganizationRestored => "organization.restored",
            Self::OrganizationPurged => "organization.purged",
            Self::AdminCreated => "admin.created",
            Self::AdminDeleted => "admin.deleted",
            Self::AdminLoginSucceeded => "admin.login_succeeded",
            Self::AdminLoginFailed => "admin.login_failed",
            Self::AdminPasswordChanged => "admin.password_changed",
            Self::LimitsChanged => "limits.changed",
            Self::TenantMoved => "tenant.moved",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Who made the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// An organization's admin (for a create, the admin it created).
    Admin {
        /// The admin.
        #[schema(value_type = String)]
        admin_id: AdminId,
    },
    /// The operator API.
    Operator,
    /// The gateway itself.
    System,
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Time-ordered id (UUIDv7).
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When.
    pub at: DateTime<Utc>,
    /// The organization concerned.
    #[schema(value_type = Option<String>)]
    pub organization_id: Option<OrgId>,
    /// Who.
    pub actor: Actor,
    /// The request that made the change.
    pub request_id: Option<String>,
    /// What changed (never a secret).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A new event, now.
    pub fn new(
        kind: EventType,
        organization_id: Option<OrgId>,
        actor: Actor,
        request_id: Option<&str>,
        details: serde_json::Value,
    ) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        // The id's own millisecond: `at` and the id order agree.
        let at = id_time(&id).unwrap_or_else(Utc::now);
        Self {
            id,
            kind,
            at,
            organization_id,
            actor,
            request_id: request_id.map(str::to_owned),
            details,
        }
    }
}

impl AuditEvent {
    /// The same event with a new id and time, now: a catalog stamps an event when it writes
    /// the change it records (a rename's event, made when it was asked for, is written when
    /// it commits), so ids keep the order in which changes happened and a reader's cursor
    /// never passes an event that is still to come.
    pub fn stamped_now(&self) -> Self {
        let fresh = Self::new(
            self.kind,
            self.organization_id,
            self.actor,
            self.request_id.as_deref(),
            serde_json::Value::Null,
        );
        Self {
            details: self.details.clone(),
            ..fresh
        }
    }
}

/// Appends `event` after the change it records has committed (an ordered step: an event is
/// never written for a change that did not happen). A failure is logged and counted
/// (`org_gateway_audit_events_total{outcome="failed"}`), never turned into a failure of the
/// change, which has already happened.
pub async fn record(catalog: &dyn super::Catalog, event: AuditEvent) {
    count_written(event.kind, catalog.append_event(&event).await);
}

/// Counts an event write's outcome in `org_gateway_audit_events_total`, logging a failure.
pub fn count_written(kind: EventType, written: super::CatalogResult<()>) {
    let kind = kind.as_str();
    match written {
        Ok(()) => crate::telemetry::metrics::AUDIT_EVENTS
            .with_label_values(&[kind, "written"])
            .inc(),
        Err(e) => {
            crate::telemetry::metrics::AUDIT_EVENTS
                .with_label_values(&[kind, "failed"])
                .inc();
            tracing::warn!(error = %e, event_type = kind, "audit event not written");
        }
    }
}

/// The least event id of events at or after `at` (ids sort by their millisecond).
pub fn id_floor(at: DateTime<Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("{:08x}-{:04x}-0", ms >> 16, ms & 0xffff)
}

/// The time encoded in an event id, if it is one.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Utc.timestamp_opt(secs as i64, nanos).single()
}

/// Which events to read, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this organization's.
    pub organization: Option<OrgId>,
    /// Only this type.
    pub kind: Option<EventType>,
    /// Only at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only at or before.
    pub until: Option<DateTime<Utc>>,
    /// Strictly after this event id (a page's cursor).
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// A page of events.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<AuditEvent>,
    /// Where the next page starts (after this id), if there may be more.
    pub next_after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_floors_bound_them() {
        let a = AuditEvent::new(
            EventType::AdminCreated,
            None,
            Actor::System,
            None,
            serde_json::json!({}),
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = AuditEvent::new(
            EventType::AdminCreated,
            None,
            Actor::System,
            None,
            serde_json::json!({}),
        );
        assert!(a.id < b.id);
        assert!(id_floor(a.at) <= a.id && id_floor(b.at) > a.id);
        let t = id_time(&a.id).unwrap();
        assert!((t - a.at).num_milliseconds().abs() <= 1);
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        let admin = AdminId::generate();
        assert_eq!(
            serde_json::to_value(Actor::Admin { admin_id: admin }).unwrap(),
            serde_json::json!({"type": "admin", "admin_id": admin.to_string()})
        );
    }
}
