-- +goose Up
-- outbound_messages loses its two foreign keys; what they guaranteed is kept
-- by the statements that create messages and by two triggers.
--
-- Why: a foreign key is checked once per inserted row, each check a query
-- of its own (an index probe and a row lock on the referenced row, through
-- SPI), and a send's messages are all inserted at once. Inserting 100,000
-- messages with one INSERT ... SELECT took 1,350-1,550 ms with both keys
-- and 960-1,180 ms without them (same 2-core machine, alternating runs on
-- copies of one database): about 4 us per row for each key, a third of the
-- statement, and the difference between a 100,000-id send under a second
-- and over it.
--
-- What replaces them:
-- * customer_id: a message is created only from customer rows its
--   statement reads and locks FOR KEY SHARE, the lock the key's check took
--   (messaging: the id send, the materialiser), so an unknown id is found
--   by that read (the send's 422) and an erasure, which locks the
--   customer's row FOR UPDATE before deleting it, still cannot interleave:
--   whichever comes second waits for the other. The key's ON DELETE SET
--   NULL becomes customers_release_messages, once per DELETE statement.
-- * campaign_id: messages are created only by a transaction that holds the
--   campaign's row (the send's status change, FOR NO KEY UPDATE, which a
--   DELETE waits for) or locks it FOR KEY SHARE (the materialiser, a test
--   send). The service never deletes a
--   campaign, and a DELETE of one with messages already failed (its
--   counters' rows, which reference it, are written again as its messages
--   go); campaigns_keep_messages makes that refusal explicit, with the
--   foreign-key violation's SQLSTATE, instead of cascading.
-- Partitions made from now on take no lock on campaigns or customers.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_campaign_id_fkey;
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_customer_id_fkey;

-- +goose StatementBegin
CREATE FUNCTION customers_release_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbound_messages m SET customer_id = NULL
    FROM gone g
    WHERE m.customer_id = g.id;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER customers_release_messages AFTER DELETE ON customers
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION customers_release_messages();

-- +goose StatementBegin
CREATE FUNCTION campaigns_keep_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbound_messages WHERE campaign_id = OLD.id) THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('campaign %s has messages and cannot be deleted', OLD.id),
            HINT = 'Messages go with their partition (MESSAGE_RETENTION); campaigns stay.';
    END IF;
    RETURN OLD;
END $$;
-- +goose StatementEnd
CREATE TRIGGER campaigns_keep_messages BEFORE DELETE ON campaigns
    FOR EACH ROW EXECUTE FUNCTION campaigns_keep_messages();

-- +goose Down
DROP TRIGGER campaigns_keep_messages ON campaigns;
DROP FUNCTION campaigns_keep_messages();
DROP TRIGGER customers_release_messages ON customers;
DROP FUNCTION customers_release_messages();
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_campaign_id_fkey
    FOREIGN KEY (campaign_id) REFERENCES campaigns (id) ON DELETE CASCADE;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE SET NULL;
