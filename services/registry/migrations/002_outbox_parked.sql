-- Outbox rows the relay could never publish (an event larger than the NATS server takes,
-- or another error no retry can cure): moved here, with why and when, so that the rows
-- after them are published. Nothing reads them back automatically; an operator decides.
CREATE TABLE outbox_parked (
    position      bigint PRIMARY KEY,
    event_id      uuid NOT NULL,
    subject       text NOT NULL,
    entity_id     text NOT NULL,
    version       integer NOT NULL,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL,
    reason        text NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT now()
);

-- Published rows are pruned by age of publication.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
