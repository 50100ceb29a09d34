-- Tenant reads in one round trip. Each function sets the tenant for the
-- current transaction (`set_config(..., true)`), then reads under row-level
-- security, in one statement: called outside a transaction block, that
-- statement is its own transaction, so the setting ends with it and the
-- connection goes back to its pool denying everything, as it came. They run
-- as the caller (SECURITY INVOKER, the default), so the policies bind them
-- as they bind any query of the tenant pool; the explicit tenant filters
-- are for the indexes, not for isolation. Their queries keep one generic
-- plan (`plan_cache_mode`): each is a lookup on a unique index whatever the
-- arguments, and otherwise PostgreSQL plans the range read of every call
-- anew (its estimate for a generic `BETWEEN` of variables is worse than for
-- the values).

-- A stream's events, bounded as `ReadStream::bounds` bounds them: forward
-- from `p_from` (the start when NULL), or backward from `p_from` (the end
-- when NULL), at most `p_limit`, never before `truncate_before`. No row
-- when the stream is absent or nothing is in range; one row with
-- `o_deleted` true (and no event) when it is deleted.
CREATE FUNCTION cairn_read_stream(
    p_tenant text, p_stream text, p_from bigint, p_limit bigint, p_backward boolean)
RETURNS TABLE (
    o_position bigint, o_tenant_id text, o_stream_id text, o_version bigint,
    o_event_id uuid, o_event_type text, o_schema_version integer, o_data jsonb,
    o_correlation_id text, o_causation_id text, o_traceparent text, o_actor text,
    o_recorded_at timestamptz, o_deleted boolean)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $cairn$
DECLARE
    s_version bigint;
    s_deleted boolean;
    s_first bigint;
    lo bigint;
    hi bigint;
BEGIN
    PERFORM set_config('cairn.tenant', p_tenant, true);
    SELECT s.version, s.deleted, coalesce(s.truncate_before, 0)
      INTO s_version, s_deleted, s_first
      FROM streams s WHERE s.tenant_id = p_tenant AND s.stream_id = p_stream;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF s_deleted THEN
        o_deleted := true;
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_limit <= 0 OR s_first > s_version THEN
        RETURN;
    END IF;
    IF NOT p_backward THEN
        lo := greatest(coalesce(p_from, 0), s_first);
        hi := CASE WHEN p_limit - 1 >= s_version - lo THEN s_version ELSE lo + (p_limit - 1) END;
        RETURN QUERY
            SELECT e.position, e.tenant_id, e.stream_id, e.version, e.event_id, e.event_type,
                   e.schema_version, e.data, e.correlation_id, e.causation_id, e.traceparent,
                   e.actor, e.recorded_at, false
              FROM events e
             WHERE e.tenant_id = p_tenant AND e.stream_id = p_stream
               AND e.version BETWEEN lo AND hi
             ORDER BY e.version;
    ELSE
        hi := least(coalesce(p_from, s_version), s_version);
        lo := CASE WHEN p_limit - 1 >= hi - s_first THEN s_first ELSE hi - (p_limit - 1) END;
        RETURN QUERY
            SELECT e.position, e.tenant_id, e.stream_id, e.version, e.event_id, e.event_type,
                   e.schema_version, e.data, e.correlation_id, e.causation_id, e.traceparent,
                   e.actor, e.recorded_at, false
              FROM events e
             WHERE e.tenant_id = p_tenant AND e.stream_id = p_stream
               AND e.version BETWEEN lo AND hi
             ORDER BY e.version DESC;
    END IF;
END
$cairn$;

-- A stream's row: version, deleted, truncate_before. No row when absent.
CREATE FUNCTION cairn_stream_info(p_tenant text, p_stream text)
RETURNS TABLE (o_stream_id text, o_version bigint, o_deleted boolean, o_truncate_before bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $cairn$
BEGIN
    PERFORM set_config('cairn.tenant', p_tenant, true);
    RETURN QUERY
        SELECT s.stream_id, s.version, s.deleted, s.truncate_before
          FROM streams s WHERE s.tenant_id = p_tenant AND s.stream_id = p_stream;
END
$cairn$;

-- A stream's snapshot: version, schema_version, state. No row when none.
CREATE FUNCTION cairn_load_snapshot(p_tenant text, p_stream text)
RETURNS TABLE (o_version bigint, o_schema_version integer, o_state jsonb)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $cairn$
BEGIN
    PERFORM set_config('cairn.tenant', p_tenant, true);
    RETURN QUERY
        SELECT s.version, s.schema_version, s.state
          FROM snapshots s WHERE s.tenant_id = p_tenant AND s.stream_id = p_stream;
END
$cairn$;
