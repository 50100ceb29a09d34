//! Who is asking, for which tenant, in which trace: the context every command
//! and query carries from the edge (HTTP, CLI, a message) down to the store.

use std::collections::BTreeSet;

use crate::{EventId, Metadata, TenantId};

/// The caller of a command or query. Built at the edge, read by middleware
/// (authorization, tracing) and turned into event [`Metadata`] on append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The tenant every store, read-model and broker operation is scoped to.
    pub tenant: TenantId,
    /// The user or service acting, if known (`sub` of a token, `cli`...).
    pub actor: Option<String>,
    /// Shared by every message of one business transaction.
    pub correlation_id: String,
    /// The message that caused this request, if it came from one.
    pub causation_id: Option<String>,
    /// W3C trace context of the caller, if any.
    pub traceparent: Option<String>,
    /// Permissions granted to the caller (filled by authentication).
    pub permissions: BTreeSet<String>,
    /// The platform service sending this message on the actor's behalf
    /// ([`as_service`](Self::as_service)). Only a service's own code sets
    /// it, never authentication: an end user's token cannot, so messages
    /// declared internal are closed to end users.
    pub service: Option<String>,
}

impl RequestContext {
    /// A context for `tenant` with a fresh correlation id and nothing else.
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            actor: None,
            correlation_id: EventId::new().to_string(),
            causation_id: None,
            traceparent: None,
            permissions: BTreeSet::new(),
            service: None,
        }
    }

    /// This context, sent by the platform service `service` (for a message
    /// between services, on behalf of the same actor and tenant).
    pub fn as_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }

    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    pub fn with_permissions<I, S>(mut self, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.permissions = permissions.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the caller holds `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// The metadata stamped on events written for this request.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.clone()),
            causation_id: self.causation_id.clone(),
            traceparent: self.traceparent.clone(),
            actor: self.actor.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_carries_the_context() {
        let tenant = TenantId::new("acme").unwrap();
        let ctx = RequestContext::new(tenant)
            .with_actor("ada")
            .with_causation_id("cmd-1")
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let meta = ctx.metadata();
        assert_eq!(meta.actor.as_deref(), Some("ada"));
        assert_eq!(meta.causation_id.as_deref(), Some("cmd-1"));
        assert_eq!(
            meta.correlation_id.as_deref(),
            Some(ctx.correlation_id.as_str())
        );
        meta.validate().unwrap();
    }

    #[test]
    fn permissions_are_checked_by_name() {
        let ctx =
            RequestContext::new(TenantId::new("acme").unwrap()).with_permissions(["flights:write"]);
        assert!(ctx.has_permission("flights:write"));
        assert!(!ctx.has_permission("flights:read"));
    }

    #[test]
    fn a_service_acts_for_the_same_actor() {
        let ctx = RequestContext::new(TenantId::new("acme").unwrap()).with_actor("ada");
        assert_eq!(ctx.service, None);
        let sent = ctx.clone().as_service("flights");
        assert_eq!(sent.service.as_deref(), Some("flights"));
        assert_eq!(sent.actor, ctx.actor);
        assert_eq!(sent.correlation_id, ctx.correlation_id);
    }
}
