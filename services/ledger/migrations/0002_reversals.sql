-- Reversals: an operator undoes an applied earn or redeem with a new
-- transaction of type 'reversal' whose entries move the points back.
--
-- reverses         the transaction undone; unique, so an original is reversed
--                  at most once whatever reversal id a retry carries.
-- reversal_reason  why the operator reversed it (free text).
-- reversed_by      the business user who reversed it.
-- uncovered        points of an earn the member no longer had, so could not
--                  be taken back (0 when fully recovered, always 0 for redeem).
-- balance_after    the member's balance once the reversal was applied.
--
-- A reversal copies its original's member, rule, client and request id, so a
-- balance stays explainable request by request; its amount is the original's.

ALTER TABLE transactions
    DROP CONSTRAINT transactions_type_check,
    ADD CONSTRAINT transactions_type_check CHECK (type IN ('earn', 'redeem', 'reversal')),
    ADD COLUMN reverses        uuid UNIQUE REFERENCES transactions (id),
    ADD COLUMN reversal_reason text,
    ADD COLUMN reversed_by     text,
    ADD COLUMN uncovered       bigint,
    ADD COLUMN balance_after   bigint,
    ADD CONSTRAINT reversal_is_described CHECK (
        CASE WHEN type = 'reversal'
            THEN reverses IS NOT NULL AND reverses <> id AND status = 'applied'
                 AND reversal_reason IS NOT NULL AND reversed_by IS NOT NULL
                 AND uncovered BETWEEN 0 AND amount AND balance_after >= 0
            ELSE reverses IS NULL AND reversal_reason IS NULL AND reversed_by IS NULL
                 AND uncovered IS NULL AND balance_after IS NULL
        END
    );

-- A reversal shares its original's (client id, request id); a request is
-- still recorded at most once. The leading columns keep serving the batch's
-- "already recorded?" lookup.
ALTER TABLE transactions DROP CONSTRAINT transactions_request_unique;
CREATE UNIQUE INDEX transactions_request_unique
    ON transactions (client_id, request_id, (type = 'reversal'));

CREATE INDEX transactions_rule ON transactions (environment, org_id, rule_id);

-- Only an applied earn or redeem of the same member and rule can be reversed;
-- the service checks this first, the database makes sure.
CREATE FUNCTION refuse_invalid_reversal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    original transactions%ROWTYPE;
BEGIN
    SELECT * INTO original FROM transactions WHERE id = NEW.reverses;
    IF original.type = 'reversal' OR original.status <> 'applied'
       OR (original.environment, original.org_id, original.user_id, original.rule_id,
           original.amount)
          IS DISTINCT FROM (NEW.environment, NEW.org_id, NEW.user_id, NEW.rule_id, NEW.amount)
    THEN
        RAISE EXCEPTION 'transaction % cannot be reversed by %', NEW.reverses, NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER transactions_valid_reversal BEFORE INSERT ON transactions
    FOR EACH ROW WHEN (NEW.reverses IS NOT NULL)
    EXECUTE FUNCTION refuse_invalid_reversal();
