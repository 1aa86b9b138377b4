-- A suppression holds for a while, not forever: a mailbox that did not exist may be
-- made, and a server may have answered wrongly. Addresses suppressed before this
-- migration keep the default of 30 days from their refusal.
ALTER TABLE suppressed_addresses ADD COLUMN expires_at timestamptz;
UPDATE suppressed_addresses SET expires_at = created_at + interval '30 days';
ALTER TABLE suppressed_addresses ALTER COLUMN expires_at SET NOT NULL;
