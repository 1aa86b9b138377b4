-- Match changes arrive as MATCHES messages of many pairs (contracts.matches). Each message
-- that some subscription wants a pair of is kept once, as received (zlib JSON); an item
-- points into it (message_id, pair: the pair's place in contracts.matches.pairs), so that
-- a pair wanted by many subscriptions is stored once and an item is a narrow row. Bodies
-- are rendered from the message when the item is gathered into a delivery. `payload` is
-- kept for items recorded before this migration.
CREATE TABLE match_messages (
    message_id  text PRIMARY KEY,
    body        bytea NOT NULL,
    encoding    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE items ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN message_id text,
    ADD COLUMN pair integer,
    ADD CONSTRAINT items_payload_or_pair CHECK (payload IS NOT NULL OR
                                                (message_id IS NOT NULL AND pair IS NOT NULL));

-- Which kept messages waiting items still point into: a message none does is dropped.
CREATE INDEX items_waiting_message ON items (message_id) WHERE delivery_id IS NULL;
