//! Row-level security on PostgreSQL: what the PostgreSQL event store and
//! read models on PostgreSQL share, so a query that forgets its tenant
//! filter still sees only its tenant's rows.
//!
//! - Every table with a `tenant_id` column carries the policy [`POLICY`]:
//!   a row is visible, and may be written, only when its `tenant_id` is the
//!   value of the setting [`TENANT_SETTING`], or when that setting is
//!   [`ALL_TENANTS`]. Unset or empty, nothing is visible (default deny).
//!   Row-level security is enabled and forced, so it binds the tables'
//!   owner too.
//! - Superusers and roles with `BYPASSRLS` ignore every policy. A
//!   connection that must be bound by them while connected as such a user
//!   switches to [`ROLE`] (`NOLOGIN`, neither superuser nor `BYPASSRLS`),
//!   which holds `USAGE` on the schema and `SELECT` on the tenant tables,
//!   nothing more.
//! - A tenant's transaction begins with [`begin_scoped`]: the setting holds
//!   for that transaction only, so a connection goes back to its pool as it
//!   came (its session default: deny).
//!
//! Nothing here runs SQL: this is the statements and names both sides use.

use cairn_core::TenantId;

/// The setting (a PostgreSQL custom parameter) naming the tenant whose rows
/// a connection or transaction may see.
pub const TENANT_SETTING: &str = "cairn.tenant";

/// The value of [`TENANT_SETTING`] that lets a connection see every tenant:
/// system access (the event store's writer and `$all`, projections, relays,
/// consumers). Never a tenant id: those start with a letter or a digit.
pub const ALL_TENANTS: &str = "*";

/// The role tenant-scoped connections switch to when the connecting user
/// would otherwise ignore row-level security.
pub const ROLE: &str = "cairn_rls";

/// The name of the policy on every tenant table.
pub const POLICY: &str = "cairn_tenant";

/// The policy's condition, for both `USING` and `WITH CHECK`.
pub const CONDITION: &str = "tenant_id = current_setting('cairn.tenant', true) \
     OR current_setting('cairn.tenant', true) = '*'";

/// Takes the schema's lock until the end of the transaction: the lock the
/// event store's migrations hold, keyed by `current_schema()`. Every Cairn
/// process that changes a schema's tables, policies or grants holds it, and
/// takes it before the role's lock ([`ensure_role`]), never after.
pub const LOCK_SCHEMA: &str =
    "SELECT pg_advisory_xact_lock(hashtext('cairn-migrate:' || current_schema()))";

/// One row, one column: whether the connected user ignores row-level
/// security (a superuser, or a role with `BYPASSRLS`).
pub const BYPASSES_QUERY: &str =
    "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user";

/// The statement that begins a transaction of `tenant`: `BEGIN`, then the
/// setting for this transaction only (`set_config(..., true)`), in one
/// simple-query message (one round trip). Tenant ids are validated to
/// `a-z 0-9 - _`; the literal is quoted all the same.
pub fn begin_scoped(tenant: &TenantId) -> String {
    format!(
        "BEGIN; SELECT set_config('{TENANT_SETTING}', {}, true)",
        literal(tenant.as_str())
    )
}

/// A `DO` block that creates `role` if it is missing and lets the current
/// user switch to it (`SET ROLE`). `CREATE ROLE` is cluster-wide, so several
/// processes may try at once: those of one database wait on an advisory
/// lock, and a role created meanwhile from another database (a unique
/// violation in the catalog) counts as created. Fails if the role exists
/// but would ignore row-level security.
///
/// `role` must be a plain identifier (`a-z`, `0-9`, `_`).
pub fn ensure_role(role: &str) -> String {
    debug_assert!(is_plain_identifier(role), "{role:?}");
    let name = literal(role);
    format!(
        "DO $cairn$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cairn-role:' || {name}));
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', {name});
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = {name} AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role % must be bound by row-level security: not a superuser, no BYPASSRLS', {name};
    END IF;
    IF NOT pg_has_role(current_user, {name}, 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', {name}, current_user);
    END IF;
END
$cairn$"
    )
}

/// A `DO` block that, in the current schema (`current_schema()`), puts the
/// policy on every table with a `tenant_id` column that has none yet
/// (enable and force row-level security, create [`POLICY`]) and, given a
/// role, grants it `USAGE` on the schema and `SELECT` on those tables where
/// it lacks them. Idempotent; it holds the schema's lock ([`LOCK_SCHEMA`])
/// so concurrent runs on one schema do not race on the catalog.
///
/// `role` must be a plain identifier (`a-z`, `0-9`, `_`).
pub fn protect_tenant_tables(role: Option<&str>) -> String {
    let grants = match role {
        Some(role) => {
            debug_assert!(is_plain_identifier(role), "{role:?}");
            let name = literal(role);
            format!(
                "
    IF NOT has_schema_privilege({name}, current_schema(), 'USAGE') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), {name});
    END IF;
    FOR t IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace
          AND EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = '{POLICY}')
          AND NOT has_table_privilege({name}, c.oid, 'SELECT')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', t, {name});
    END LOOP;"
            )
        }
        None => String::new(),
    };
    let create_policy = literal(&format!(
        "CREATE POLICY {POLICY} ON %s USING ({CONDITION}) WITH CHECK ({CONDITION})"
    ));
    format!(
        "DO $cairn$
DECLARE
    t regclass;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cairn-migrate:' || current_schema()));
    FOR t IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('r', 'p')
          AND EXISTS (SELECT FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
          AND NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = '{POLICY}')
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format({create_policy}, t);
    END LOOP;{grants}
END
$cairn$"
    )
}

/// Whether `name` is a plain identifier: 1-63 of `a-z`, `0-9`, `_`,
/// starting with a letter or `_`.
pub fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `text` as a standard SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_transaction_sets_the_tenant_for_itself_only() {
        let tenant = TenantId::new("acme-1").unwrap();
        assert_eq!(
            begin_scoped(&tenant),
            "BEGIN; SELECT set_config('cairn.tenant', 'acme-1', true)"
        );
    }

    #[test]
    fn the_statements_name_the_policy_and_the_role() {
        let protect = protect_tenant_tables(Some("cairn_rls"));
        assert!(protect.contains(
            "format('CREATE POLICY cairn_tenant ON %s USING (tenant_id = current_setting(''cairn.tenant'', true)"
        ));
        assert!(protect.contains("GRANT SELECT ON %s TO %I', t, 'cairn_rls'"));
        assert!(!protect_tenant_tables(None).contains("GRANT"));
        assert!(ensure_role("cairn_rls").contains("CREATE ROLE %I NOLOGIN', 'cairn_rls'"));
    }

    #[test]
    fn plain_identifiers() {
        assert!(is_plain_identifier("cairn_rls"));
        assert!(is_plain_identifier("_x1"));
        for bad in ["", "1x", "Cairn", "a-b", "a\"b", "a'b", &"x".repeat(64)] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }
}
