-- The log, the stream index and snapshots. Every table carries tenant_id:
-- a tenant's rows can always be found (and removed) on their own.

-- One row per event. `position` is the rowid, so `$all` reads are range
-- scans over the table itself; it is assigned by the single writer and
-- never reused (rows are never deleted).
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    tenant_id      TEXT    NOT NULL,
    stream_id      TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       BLOB    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    correlation_id TEXT,
    causation_id   TEXT,
    traceparent    TEXT,
    actor          TEXT,
    recorded_at    INTEGER NOT NULL,
    -- Stream reads, and the last line of defence against two events
    -- claiming one version.
    UNIQUE (tenant_id, stream_id, version),
    -- Idempotency lookups; ids are scoped to their tenant.
    UNIQUE (tenant_id, event_id)
) STRICT;

-- `$all` filtered by tenant, tenant + category, tenant + event type: each
-- ends in position so the filtered read comes out in log order without a
-- sort, and paging stays proportional to the page.
CREATE INDEX events_by_tenant ON events (tenant_id, position);
CREATE INDEX events_by_tenant_category ON events (tenant_id, category, position);
CREATE INDEX events_by_tenant_type ON events (tenant_id, event_type, position);

-- One row per stream that has events: its last version and lifecycle. The
-- writer reads it to judge expected versions without touching `events`.
CREATE TABLE streams (
    tenant_id       TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    truncate_before INTEGER,
    PRIMARY KEY (tenant_id, stream_id)
) STRICT, WITHOUT ROWID;

-- The latest snapshot per stream. A rowid table (not WITHOUT ROWID)
-- because states can be large.
CREATE TABLE snapshots (
    tenant_id      TEXT    NOT NULL,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, stream_id)
) STRICT;
