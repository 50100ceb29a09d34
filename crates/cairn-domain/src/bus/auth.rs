//! The authorization hook of the buses: an [`Authorizer`] decides, from the
//! caller's [`RequestContext`] and the message's kind and name, whether a
//! dispatch may go ahead. It runs before validation and before the handler,
//! so a caller without the right learns nothing about the message's rules.
//!
//! [`AllowAll`] is the default. [`PermissionMap`] requires a named
//! permission per message name, checked with
//! [`RequestContext::has_permission`]; authentication fills the context's
//! permissions from the caller's token.

use std::collections::HashMap;

use cairn_core::RequestContext;

use super::{BusError, MessageInfo};

/// Decides whether the caller may send a message.
pub trait Authorizer: Send + Sync {
    /// `Ok(())` to let the message through, [`BusError::Unauthenticated`] or
    /// [`BusError::Forbidden`] to refuse it.
    fn authorize(&self, ctx: &RequestContext, message: &MessageInfo) -> Result<(), BusError>;
}

/// Lets every message through (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _ctx: &RequestContext, _message: &MessageInfo) -> Result<(), BusError> {
        Ok(())
    }
}

/// Requires one permission per message name.
///
/// A caller without the permission is refused: [`BusError::Unauthenticated`]
/// when the context has no actor (nobody signed in), [`BusError::Forbidden`]
/// otherwise. Messages not in the map are let through, unless
/// [`deny_unlisted`](Self::deny_unlisted) makes the map the complete list.
/// Keys are message names, so command and query names should not collide.
#[derive(Debug, Clone, Default)]
pub struct PermissionMap {
    required: HashMap<String, String>,
    deny_unlisted: bool,
}

impl PermissionMap {
    /// An empty map that lets unlisted messages through.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `permission` for the message named `name`.
    pub fn require(mut self, name: impl Into<String>, permission: impl Into<String>) -> Self {
        self.required.insert(name.into(), permission.into());
        self
    }

    /// Refuses (`forbidden`) every message the map does not list.
    pub fn deny_unlisted(mut self) -> Self {
        self.deny_unlisted = true;
        self
    }

    /// The permission the message named `name` requires, if listed.
    pub fn permission_for(&self, name: &str) -> Option<&str> {
        self.required.get(name).map(String::as_str)
    }
}

impl Authorizer for PermissionMap {
    fn authorize(&self, ctx: &RequestContext, message: &MessageInfo) -> Result<(), BusError> {
        let Some(permission) = self.permission_for(message.name) else {
            if self.deny_unlisted {
                return Err(BusError::Forbidden(format!(
                    "{} {} is not open to any caller",
                    message.kind, message.name
                )));
            }
            return Ok(());
        };
        if ctx.has_permission(permission) {
            return Ok(());
        }
        let reason = format!(
            "{} {} requires the permission {permission}",
            message.kind, message.name
        );
        Err(if ctx.actor.is_none() {
            BusError::Unauthenticated(reason)
        } else {
            BusError::Forbidden(reason)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MessageKind;
    use cairn_core::{ErrorCode, TenantId};

    fn info(name: &'static str) -> MessageInfo {
        MessageInfo {
            kind: MessageKind::Command,
            name,
        }
    }

    #[test]
    fn permission_map_checks_the_context() {
        let map = PermissionMap::new().require("flights.schedule", "flights:write");
        let tenant = TenantId::new("acme").unwrap();
        let anonymous = RequestContext::new(tenant.clone());
        let reader = RequestContext::new(tenant.clone())
            .with_actor("ada")
            .with_permissions(["flights:read"]);
        let writer = reader.clone().with_permissions(["flights:write"]);

        let code =
            |ctx: &RequestContext, name| map.authorize(ctx, &info(name)).map_err(|e| e.code());
        assert_eq!(
            code(&anonymous, "flights.schedule"),
            Err(ErrorCode::Unauthenticated)
        );
        assert_eq!(code(&reader, "flights.schedule"), Err(ErrorCode::Forbidden));
        assert_eq!(code(&writer, "flights.schedule"), Ok(()));
        // unlisted: open by default, closed when the map is the whole list
        assert_eq!(code(&anonymous, "flights.get"), Ok(()));
        let strict = map.clone().deny_unlisted();
        assert_eq!(
            strict
                .authorize(&writer, &info("flights.get"))
                .map_err(|e| e.code()),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(strict.authorize(&writer, &info("flights.schedule")), Ok(()));
        assert_eq!(AllowAll.authorize(&anonymous, &info("anything")), Ok(()));
    }
}
