-- Subscriptions belong to an organization (the registry's API keys say which).
-- `secret` signs webhooks; `previous_secret` keeps signing until `previous_until` after a
-- rotation. Email subscriptions hold nothing back but the verification: until `verified`,
-- no alert is routed to them.
CREATE TABLE subscriptions (
    id                text PRIMARY KEY,
    owner             text NOT NULL,
    channel           text NOT NULL CHECK (channel IN ('webhook', 'email')),
    url               text,
    address           text,
    filter            jsonb NOT NULL,
    digest            text NOT NULL DEFAULT 'immediate'
                      CHECK (digest IN ('immediate', 'hourly', 'daily')),
    secret            text,
    previous_secret   text,
    previous_until    timestamptz,
    verified          boolean NOT NULL DEFAULT false,
    verify_token      text UNIQUE,
    unsubscribe_token text NOT NULL UNIQUE,
    contact_email     text,
    enabled           boolean NOT NULL DEFAULT true,
    disabled_reason   text,
    failing_since     timestamptz,
    last_success_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((channel = 'webhook') = (url IS NOT NULL)),
    CHECK ((channel = 'email') = (address IS NOT NULL))
);
CREATE INDEX subscriptions_owner ON subscriptions (owner, id);

-- Every change to subscriptions bumps this, so each notifier knows when to reload its
-- routing index.
CREATE SEQUENCE subscription_changes;

-- One row per (subscription, match event): the unique key that makes a redelivered or
-- replayed event a no-op. Items wait here until they are gathered into a delivery.
CREATE TABLE items (
    subscription_id  text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event_id         text NOT NULL,
    payload          jsonb NOT NULL,
    occurred_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivery_id      uuid,
    PRIMARY KEY (subscription_id, event_id)
);
CREATE INDEX items_waiting ON items (subscription_id, created_at) WHERE delivery_id IS NULL;

-- A delivery is one webhook call or one email, recorded (with its exact body) before the
-- first attempt; its id is the webhook-id on every attempt and replay. A claimed delivery's
-- next_attempt_at is pushed past the attempt's timeout, so a process that dies mid-send
-- leaves it due again for another.
CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,
    subscription_id  text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    kind             text NOT NULL DEFAULT 'matches'
                     CHECK (kind IN ('matches', 'test', 'verify', 'notice')),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    body             bytea NOT NULL,
    item_count       integer NOT NULL DEFAULT 0,
    oldest_change_at timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    last_status      integer,
    last_error       text
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, created_at DESC);
CREATE INDEX deliveries_in_flight ON deliveries (subscription_id) WHERE status = 'pending';

CREATE TABLE attempts (
    id             bigserial PRIMARY KEY,
    delivery_id    uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    status_code    integer NOT NULL,
    duration_ms    double precision NOT NULL,
    error          text,
    response_body  text
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

-- Addresses whose mail server refused them for good (5xx): nothing more is sent.
CREATE TABLE suppressed_addresses (
    address     text PRIMARY KEY,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION work_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_work', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER items_inserted AFTER INSERT ON items
    FOR EACH STATEMENT EXECUTE FUNCTION work_notify();
CREATE TRIGGER deliveries_inserted AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION work_notify();
