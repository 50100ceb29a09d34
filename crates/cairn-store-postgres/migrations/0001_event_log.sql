-- The event log. Text identifiers use the "C" collation so ordering is by
-- bytes, the same on every backend.

-- One row holding the last committed global position. Writers lock it
-- (SELECT ... FOR UPDATE) for the whole transaction, so positions are
-- assigned and become visible strictly in order: see ARCHITECTURE.md,
-- "Gap-safe global order".
CREATE TABLE log_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO log_head (id, position) VALUES (1, 0);

CREATE TABLE streams (
    tenant_id text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    truncate_before bigint,
    PRIMARY KEY (tenant_id, stream_id)
);

CREATE TABLE events (
    position bigint PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    category text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    event_id uuid NOT NULL,
    event_type text COLLATE "C" NOT NULL,
    schema_version integer NOT NULL,
    data jsonb NOT NULL,
    correlation_id text,
    causation_id text,
    traceparent text,
    actor text,
    recorded_at timestamptz NOT NULL,
    UNIQUE (tenant_id, stream_id, version),
    UNIQUE (tenant_id, event_id)
);
CREATE INDEX events_tenant_position ON events (tenant_id, position);
CREATE INDEX events_category_position ON events (category, position);

CREATE TABLE snapshots (
    tenant_id text COLLATE "C" NOT NULL,
    stream_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    schema_version integer NOT NULL,
    state jsonb NOT NULL,
    PRIMARY KEY (tenant_id, stream_id)
);
