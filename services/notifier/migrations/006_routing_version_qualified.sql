-- routing_changed() named its tables without a schema, so it bumped whichever the
-- changing session's search_path found: another notifier schema's in the same database,
-- or none (every UPDATE of subscriptions then failed). It names the trigger's own schema
-- now, and makes the version row again if it was deleted (a consumer reads a missing row
-- as a version that never matches, and reloads).
CREATE OR REPLACE FUNCTION routing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- not on what routing never reads: each delivery's outcome updates a row
        IF NOT EXISTS (SELECT FROM old_rows o JOIN new_rows n USING (id)
                       WHERE (o.enabled, o.verified, o.channel, o.filter)
                             IS DISTINCT FROM (n.enabled, n.verified, n.channel, n.filter)) THEN
            RETURN NULL;
        END IF;
    END IF;
    EXECUTE format('INSERT INTO %I.routing_version AS r (version) VALUES (1)'
                   ' ON CONFLICT (only_row) DO UPDATE SET version = r.version + 1',
                   TG_TABLE_SCHEMA);
    -- notifiers of the release before, during a rolling upgrade, watch the sequence
    PERFORM nextval(format('%I.subscription_changes', TG_TABLE_SCHEMA)::regclass);
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_subscriptions', '');
    RETURN NULL;
END $$;
