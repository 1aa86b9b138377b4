CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only a hash of each key's secret is kept; key_id is public and finds the row.
CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES organizations (id),
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- Designs and facilities share one table: the same write, version and event rules.
-- A deleted entity stays as a tombstone so that its version keeps increasing if the
-- id is used again (consumers order changes by version).
CREATE TABLE entities (
    kind          text NOT NULL CHECK (kind IN ('design', 'facility')),
    id            text NOT NULL,
    owner         text NOT NULL REFERENCES organizations (id),
    version       integer NOT NULL,
    deleted       boolean NOT NULL DEFAULT false,
    name          text NOT NULL,
    data          jsonb,
    manifest      text,
    media_type    text,
    content_hash  text,
    processes     text[] NOT NULL DEFAULT '{}',
    materials     text[] NOT NULL DEFAULT '{}',
    search        tsvector,
    lat           double precision,
    lon           double precision,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);
CREATE INDEX entities_processes ON entities USING gin (processes) WHERE NOT deleted;
CREATE INDEX entities_materials ON entities USING gin (materials) WHERE NOT deleted;
CREATE INDEX entities_search ON entities USING gin (search) WHERE NOT deleted;
CREATE INDEX entities_owner ON entities (kind, owner, id) WHERE NOT deleted;
CREATE INDEX entities_position ON entities (kind, lat, lon) WHERE NOT deleted AND lat IS NOT NULL;

-- The transactional outbox: one row per committed change, published by the relay.
CREATE TABLE outbox (
    position      bigserial PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    subject       text NOT NULL,
    entity_id     text NOT NULL,
    version       integer NOT NULL,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;

-- Wakes the relay at commit; the channel is per schema so that several registries
-- (or test schemas) on one server do not wake each other.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
