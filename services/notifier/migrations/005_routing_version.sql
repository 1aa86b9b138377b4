-- The routing indexes' version. The sequence subscription_changes handed out its new value
-- before the change committed: a notifier could read that value, load the subscriptions
-- without the change, take itself to be current and route nothing to a new, re-enabled or
-- confirmed subscription until some other change came. A row is seen only together with
-- what its transaction wrote, and each change waits for the one before it to commit, so the
-- version read in the same snapshot as the subscriptions describes exactly them.
-- A trigger bumps it in the changing transaction itself, for every change to what routing
-- reads (whether a subscription takes alerts, and its filter), whichever code makes it.
-- The NOTIFY, delivered only at commit, lets each notifier reload at once rather than on
-- its next batch.
CREATE TABLE routing_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL
);
INSERT INTO routing_version (version) VALUES (1);

-- Once per statement, after it locked every row it changes: were it once per row, two
-- statements changing several subscriptions could each hold a row the other waits for
-- while waiting for the version the other holds.
CREATE FUNCTION routing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- not on what routing never reads: each delivery's outcome updates a row
        IF NOT EXISTS (SELECT FROM old_rows o JOIN new_rows n USING (id)
                       WHERE (o.enabled, o.verified, o.channel, o.filter)
                             IS DISTINCT FROM (n.enabled, n.verified, n.channel, n.filter)) THEN
            RETURN NULL;
        END IF;
    END IF;
    UPDATE routing_version SET version = version + 1;
    -- notifiers of the release before, still running during a rolling upgrade, watch the
    -- sequence (a later migration drops it)
    PERFORM nextval('subscription_changes');
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_subscriptions', '');
    RETURN NULL;
END $$;
CREATE TRIGGER subscriptions_added_or_deleted AFTER INSERT OR DELETE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION routing_changed();
CREATE TRIGGER subscriptions_updated AFTER UPDATE ON subscriptions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION routing_changed();
