//! The identity routes, one module per audience: `realm` (the OIDC
//! endpoints), `admin` (the admin API) and [`browser`] (the web console's
//! sign-in). What they share (problem mapping, the tenant of a path) is in
//! `common`, which uses none of them; this module only composes them.
//!
//! [`realm_router`] (no token needed; mount it with the public routes):
//! ```text
//! GET  /realms/{tenant}/.well-known/openid-configuration
//! GET  /realms/{tenant}/protocol/openid-connect/certs        JWKS
//! POST /realms/{tenant}/protocol/openid-connect/token        password | client_credentials | refresh_token
//! POST /realms/{tenant}/protocol/openid-connect/revoke
//! GET  /realms/{tenant}/protocol/openid-connect/userinfo     (bearer token)
//! POST /realms/{tenant}/browser/{login,refresh,logout}       the web console's cookie flow, see [`browser`]
//! ```
//! [`admin_router`] (behind bearer authentication, see
//! [`cairn_http::bearer_auth`]):
//! ```text
//! POST /api/admin/tenants                     {"id","name"}                      super-admin
//! GET  /api/admin/tenants                                                        super-admin
//! POST /api/admin/tenants/{tenant}/users      {"username","password","roles"}    tenant admin or super-admin
//! GET  /api/admin/tenants/{tenant}/users                                         tenant admin or super-admin
//! POST /api/admin/tenants/{tenant}/clients    {"clientId","roles"}               tenant admin or super-admin
//! POST /api/admin/tenants/{tenant}/keys       rotate the signing key             tenant admin or super-admin
//! POST /api/admin/groups                      {"id","name","tenants","shared"}   super-admin
//! GET  /api/admin/groups                                                         super-admin
//! GET  /api/admin/groups/{id}                                                    super-admin
//! PUT  /api/admin/groups/{id}                 {"tenants","shared"}               super-admin
//! DELETE /api/admin/groups/{id}                                                  super-admin
//! ```
//! A tenant group lets each member read what it shares of every other
//! member: tokens carry it in their `shared` claim, taken from the groups
//! when the realm is loaded (see [`crate::IdentityOptions::realm_ttl`]).
//! The token endpoints answer errors the OAuth way (`{"error",
//! "error_description"}`, RFC 6749 §5.2); everything else in problem+json.
//! [`IdentityOpenApi`] describes all of these routes.

mod admin;
pub mod browser;
mod common;
mod realm;

use axum::Router;

use crate::Identity;

/// The OIDC routes of every realm, with the web console's sign-in
/// ([`browser`]).
pub fn realm_router(identity: Identity) -> Router {
    realm::router(identity.clone()).merge(browser::router(identity))
}

/// The admin API; needs [`cairn_http::bearer_auth`] in front of it.
pub fn admin_router(identity: Identity) -> Router {
    admin::router(identity)
}

/// The OpenAPI description of the identity routes: the realms' OIDC
/// endpoints, the browser sign-in and the admin API.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(
        realm::discovery, realm::certs, realm::token, realm::revoke, realm::userinfo,
        browser::login, browser::refresh, browser::logout,
        admin::create_tenant, admin::list_tenants, admin::create_user, admin::list_users,
        admin::create_client, admin::rotate_keys,
        admin::create_group, admin::list_groups, admin::get_group, admin::update_group,
        admin::dissolve_group,
    ),
    components(schemas(
        realm::TokenRequest, realm::RevocationRequest,
        browser::BrowserLogin, browser::BrowserToken,
        admin::NewTenant, admin::TenantView, admin::TenantList,
        admin::NewUser, admin::UserView, admin::UserList,
        admin::NewOAuthClient, admin::ClientCreated, admin::KeyRotated,
        admin::NewGroup, admin::GroupChange, admin::GroupView, admin::GroupList,
    )),
    tags(
        (name = "realms", description = "OIDC realms, one per tenant, in Keycloak's shape; token errors are OAuth JSON"),
        (name = "browser", description = "The web console's sign-in: refresh token in an HttpOnly cookie, CSRF header required"),
        (name = "identity", description = "Admin API: tenants and tenant groups (super-admin), users, clients and signing keys"),
    )
)]
pub struct IdentityOpenApi;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use utoipa::OpenApi as _;

    fn document() -> Value {
        serde_json::to_value(cairn_http::openapi_document(
            "test",
            "0",
            [IdentityOpenApi::openapi()],
        ))
        .unwrap()
    }

    #[test]
    fn the_admin_routes_are_documented_with_their_request_bodies() {
        let doc = document();
        /// Path, method, body schema, its properties, the required ones.
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: [Case; 6] = [
            (
                "/api/admin/tenants",
                "post",
                "NewTenant",
                &["id", "name"],
                &["id", "name"],
            ),
            (
                "/api/admin/tenants/{tenant}/users",
                "post",
                "NewUser",
                &["username", "password", "roles"],
                &["username", "password"],
            ),
            (
                "/api/admin/tenants/{tenant}/clients",
                "post",
                "NewOAuthClient",
                &["clientId", "roles"],
                &["clientId"],
            ),
            (
                "/realms/{tenant}/browser/login",
                "post",
                "BrowserLogin",
                &["username", "password"],
                &["username", "password"],
            ),
            (
                "/api/admin/groups",
                "post",
                "NewGroup",
                &["id", "name", "tenants", "shared"],
                &["id", "name", "tenants"],
            ),
            (
                "/api/admin/groups/{id}",
                "put",
                "GroupChange",
                &["tenants", "shared"],
                &["tenants", "shared"],
            ),
        ];
        for (path, method, schema, properties, required) in cases {
            let op = &doc["paths"][path][method];
            assert_eq!(
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                format!("#/components/schemas/{schema}"),
                "{method} {path}: {op}"
            );
            let body = &doc["components"]["schemas"][schema];
            for p in properties {
                assert!(body["properties"][p].is_object(), "{schema}.{p}: {body}");
            }
            let mut listed: Vec<&str> = body["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            listed.sort_unstable();
            let mut required = required.to_vec();
            required.sort_unstable();
            assert_eq!(listed, required, "{schema}");
        }
    }

    #[test]
    fn every_identity_route_is_in_the_document() {
        let doc = document();
        let admin = [
            ("/api/admin/tenants", "post", "201"),
            ("/api/admin/tenants", "get", "200"),
            ("/api/admin/tenants/{tenant}/users", "post", "201"),
            ("/api/admin/tenants/{tenant}/users", "get", "200"),
            ("/api/admin/tenants/{tenant}/clients", "post", "201"),
            ("/api/admin/tenants/{tenant}/keys", "post", "201"),
            ("/api/admin/groups", "post", "201"),
            ("/api/admin/groups", "get", "200"),
            ("/api/admin/groups/{id}", "get", "200"),
            ("/api/admin/groups/{id}", "put", "200"),
        ];
        for (path, method, ok) in admin {
            let op = &doc["paths"][path][method];
            assert!(op["responses"][ok].is_object(), "{method} {path}: {op}");
            for refused in ["401", "403"] {
                assert_eq!(
                    op["responses"][refused]["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {refused}"
                );
            }
            assert!(op["security"][0]["bearer"].is_array(), "{method} {path}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for action in ["login", "refresh", "logout"] {
            let op = &doc["paths"][format!("/realms/{{tenant}}/browser/{action}")]["post"];
            assert_eq!(op["tags"][0], "browser", "{action}");
            assert!(op["responses"]["403"].is_object(), "{action}");
        }
        assert!(
            doc["paths"]["/realms/{tenant}/protocol/openid-connect/token"]["post"]["requestBody"]
                ["content"]["application/x-www-form-urlencoded"]
                .is_object()
        );
        for path in [
            "/realms/{tenant}/.well-known/openid-configuration",
            "/realms/{tenant}/protocol/openid-connect/certs",
            "/realms/{tenant}/protocol/openid-connect/userinfo",
        ] {
            assert!(doc["paths"][path]["get"].is_object(), "{path}");
        }
    }
}
