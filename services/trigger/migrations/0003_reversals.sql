-- A request the ledger applied can later be reversed by an operator. Its status
-- stays 'succeeded' (the points did move); these columns say what the reversal
-- moved back, so GET /v1/points/requests/{id} can show it.
--
-- reversal_id      the ledger's transaction id of the reversal
-- reversed_amount  points moved back (and released from the request's caps)
-- uncovered_amount points of a reversed earn the member had already spent
-- reversed_at      when the ledger recorded the reversal

ALTER TABLE requests
    ADD COLUMN reversal_id      uuid,
    ADD COLUMN reversed_amount  bigint,
    ADD COLUMN uncovered_amount bigint,
    ADD COLUMN reversed_at      timestamptz,
    ADD CONSTRAINT reversal_is_described CHECK (
        (reversed_at IS NULL) = (reversal_id IS NULL)
        AND (reversed_at IS NULL) = (reversed_amount IS NULL)
        AND (reversed_at IS NULL) = (uncovered_amount IS NULL)
        AND (reversed_at IS NULL OR status = 'succeeded')
    );
