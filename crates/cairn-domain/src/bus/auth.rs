//! The authorization hook of the buses: an [`Authorizer`] decides, from the
//! caller's [`RequestContext`] and the message's kind and name, whether a
//! dispatch may go ahead. It runs before validation and before the handler,
//! so a caller without the right learns nothing about the message's rules.
//!
//! [`AllowAll`] is the default. [`DeclaredAccess`] is what a platform
//! service runs with: each message declares who may send it, next to its
//! type ([`Access`], the `ACCESS` of `Command` and `Query`), and a message
//! that declares nothing is refused. [`PermissionMap`] requires a named
//! permission per message name, for buses whose messages are not the
//! caller's to declare. Permissions are checked with
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

/// Who may send a message, declared next to its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Declares nothing: refused by [`DeclaredAccess`].
    Undeclared,
    /// Any caller holding this permission (granted by a token's roles).
    Permission(&'static str),
    /// Between the platform's services only: the sender's context must be
    /// a service's ([`RequestContext::as_service`]), which no end user's
    /// token yields, over HTTP or over the broker.
    Internal,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Undeclared => f.write_str("undeclared"),
            Access::Permission(p) => write!(f, "permission {p}"),
            Access::Internal => f.write_str("internal"),
        }
    }
}

/// Checks each message's declared [`Access`]: an undeclared message is
/// refused, an internal one is accepted only from a service's context, and
/// a permission is required of the caller, unless
/// [`without_permissions`](Self::without_permissions) (a deployment with no
/// tokens, where the caller is trusted) says otherwise. Deny by default.
#[derive(Debug, Clone, Copy)]
pub struct DeclaredAccess {
    check_permissions: bool,
}

impl Default for DeclaredAccess {
    fn default() -> Self {
        Self::new()
    }
}

impl DeclaredAccess {
    /// Checks declarations and permissions.
    pub fn new() -> Self {
        Self {
            check_permissions: true,
        }
    }

    /// Checks declarations only: every caller is taken to hold every
    /// permission (no tokens in this deployment). Undeclared messages stay
    /// closed, internal ones stay the services' own.
    pub fn without_permissions() -> Self {
        Self {
            check_permissions: false,
        }
    }
}

impl Authorizer for DeclaredAccess {
    fn authorize(&self, ctx: &RequestContext, message: &MessageInfo) -> Result<(), BusError> {
        match message.access {
            Access::Undeclared => Err(BusError::Forbidden(format!(
                "{} {} is not open to any caller: it declares no access",
                message.kind, message.name
            ))),
            Access::Internal if ctx.service.is_some() => Ok(()),
            Access::Internal => Err(BusError::Forbidden(format!(
                "{} {} is internal: only the platform's services may send it",
                message.kind, message.name
            ))),
            Access::Permission(_) if !self.check_permissions => Ok(()),
            Access::Permission(permission) => {
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
    }
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
            access: Access::Undeclared,
        }
    }

    #[test]
    fn declared_access_denies_by_default() {
        let tenant = TenantId::new("acme").unwrap();
        let user = RequestContext::new(tenant.clone())
            .with_actor("ada")
            .with_permissions(["flights:write"]);
        let anonymous = RequestContext::new(tenant);
        let service = user.clone().as_service("flights");
        let msg = |access| MessageInfo {
            kind: MessageKind::Command,
            name: "x.y",
            access,
        };
        let check = |auth: DeclaredAccess, ctx: &RequestContext, access| {
            auth.authorize(ctx, &msg(access)).map_err(|e| e.code())
        };
        let strict = DeclaredAccess::new();
        let open = DeclaredAccess::without_permissions();
        for auth in [strict, open] {
            // nothing declared: nobody, not even a service
            for ctx in [&user, &anonymous, &service] {
                assert_eq!(
                    check(auth, ctx, Access::Undeclared),
                    Err(ErrorCode::Forbidden)
                );
            }
            // internal: services only
            assert_eq!(
                check(auth, &user, Access::Internal),
                Err(ErrorCode::Forbidden)
            );
            assert_eq!(
                check(auth, &anonymous, Access::Internal),
                Err(ErrorCode::Forbidden)
            );
            assert_eq!(check(auth, &service, Access::Internal), Ok(()));
        }
        let write = Access::Permission("flights:write");
        let read = Access::Permission("flights:read");
        assert_eq!(check(strict, &user, write), Ok(()));
        assert_eq!(check(strict, &user, read), Err(ErrorCode::Forbidden));
        assert_eq!(
            check(strict, &anonymous, read),
            Err(ErrorCode::Unauthenticated)
        );
        // a service acting for a user has no more rights than the user
        assert_eq!(check(strict, &service, read), Err(ErrorCode::Forbidden));
        assert_eq!(check(open, &anonymous, read), Ok(()));
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
