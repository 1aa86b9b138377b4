-- MATCHES messages the notifier could not read (not our shape, wrong types, a body that
-- does not unpack): kept for the operator, acked so the stream moves on.
CREATE TABLE parked_messages (
    id          bigserial PRIMARY KEY,
    subject     text NOT NULL,
    stream_seq  bigint,
    reason      text NOT NULL,
    data        bytea NOT NULL,  -- the first 64 KB as received
    size        integer NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parked_messages_at ON parked_messages (parked_at);

-- What history pruning reads: finished deliveries by age; items already gathered by age.
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE status <> 'pending';
CREATE INDEX items_gathered ON items (created_at) WHERE delivery_id IS NOT NULL;
