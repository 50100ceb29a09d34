-- Raised by the writer's one-statement append when a stream is no longer in
-- the state the writer assumed (another writer moved it, it was deleted, or
-- it already exists): the statement, and so the whole batch, rolls back and
-- the writer judges the batch again on its full path. See src/fast.rs.
CREATE FUNCTION cairn_stale(expected bigint, matched bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cairn: % of % streams were as the writer assumed', matched, expected
        USING ERRCODE = 'CA001';
END
$$;
