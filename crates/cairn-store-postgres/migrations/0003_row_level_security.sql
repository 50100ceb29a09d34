-- Row-level security: a row of a tenant table is visible, and may be
-- written, only when its tenant is the one the connection or transaction set
-- in `cairn.tenant`, or when that setting is '*' (system access: the writer,
-- `$all`). Unset or empty, nothing is visible. Forced, so the tables' owner is
-- bound too; superusers and BYPASSRLS roles are not, which is why tenant
-- connections switch to a role that is (see cairn_store::row_security).
-- log_head and cairn_migrations carry no tenant: system-only.
ALTER TABLE streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE streams FORCE ROW LEVEL SECURITY;
CREATE POLICY cairn_tenant ON streams
    USING (tenant_id = current_setting('cairn.tenant', true)
           OR current_setting('cairn.tenant', true) = '*')
    WITH CHECK (tenant_id = current_setting('cairn.tenant', true)
                OR current_setting('cairn.tenant', true) = '*');

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY cairn_tenant ON events
    USING (tenant_id = current_setting('cairn.tenant', true)
           OR current_setting('cairn.tenant', true) = '*')
    WITH CHECK (tenant_id = current_setting('cairn.tenant', true)
                OR current_setting('cairn.tenant', true) = '*');

ALTER TABLE snapshots ENABLE ROW LEVEL SECURITY;
ALTER TABLE snapshots FORCE ROW LEVEL SECURITY;
CREATE POLICY cairn_tenant ON snapshots
    USING (tenant_id = current_setting('cairn.tenant', true)
           OR current_setting('cairn.tenant', true) = '*')
    WITH CHECK (tenant_id = current_setting('cairn.tenant', true)
                OR current_setting('cairn.tenant', true) = '*');
