-- Expiring points and blocked members (issue 19). Runs with search_path = ledger.
--
-- lots          every award whose points expire: what is left of it, and the
--               expiry transaction that took the rest once it was due. Its id is
--               the awarding earn's transaction id.
-- lot_uses      what a transaction took from a lot (a redeem or an earn's
--               reversal: positive) or gave back to it (a redeem's reversal:
--               negative). Only transactions that touch lots write rows here.
-- expiry        a transaction type: what was left of a due lot, moved from the
--               member back to its rule's pool. It copies its earn's member,
--               rule, client and request id; its id is derived from the lot's,
--               so the primary key alone makes a lot expire once.
-- accounts      a member's account says whether the member is blocked (projected
--               from members.lifecycle.v1, the latest change winning) and how
--               many of its points sit in open lots, which the batch's account
--               lock returns, so a batch with no lots reads nothing more.

ALTER TABLE transactions
    DROP CONSTRAINT transactions_type_check,
    ADD CONSTRAINT transactions_type_check
        CHECK (type IN ('earn', 'redeem', 'reversal', 'expiry'));

-- An expiry shares its earn's (client id, request id): the request is still
-- recorded once, by the earn (and at most once more by its reversal).
DROP INDEX transactions_request_unique;
CREATE UNIQUE INDEX transactions_request_unique
    ON transactions (client_id, request_id, (type = 'reversal'))
    WHERE type <> 'expiry';

ALTER TABLE accounts
    ADD COLUMN blocked             boolean     NOT NULL DEFAULT false,
    ADD COLUMN standing_changed_at timestamptz,
    ADD COLUMN lots_remaining      bigint      NOT NULL DEFAULT 0,
    ADD CONSTRAINT lots_within_balance
        CHECK (lots_remaining >= 0 AND (kind <> 'member' OR lots_remaining <= balance));

-- A lot's account needs no foreign key: accounts are never removed (0004).
CREATE TABLE lots (
    id         uuid        PRIMARY KEY REFERENCES transactions (id),
    account_id bigint      NOT NULL,
    rule_id    text        NOT NULL,
    expires_at timestamptz NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    remaining  bigint      NOT NULL,
    expired_by uuid        UNIQUE REFERENCES transactions (id),
    CONSTRAINT lot_remaining_within_amount CHECK (remaining BETWEEN 0 AND amount),
    CONSTRAINT expired_lot_is_empty CHECK (expired_by IS NULL OR remaining = 0)
);

-- A member's open lots, soonest first (redemptions, reversals, the balance).
CREATE INDEX lots_open_of_account ON lots (account_id, expires_at, id)
    WHERE expired_by IS NULL AND remaining > 0;
-- The lots the expiry process has to take, soonest first.
CREATE INDEX lots_open_due ON lots (expires_at, id)
    WHERE expired_by IS NULL AND remaining > 0;

-- A lot changes (what is left of it) but stays, like the earn it records.
CREATE TRIGGER lots_kept BEFORE DELETE ON lots
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();

CREATE TABLE lot_uses (
    transaction_id uuid   NOT NULL REFERENCES transactions (id),
    lot_id         uuid   NOT NULL REFERENCES lots (id),
    amount         bigint NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (transaction_id, lot_id)
);

CREATE INDEX lot_uses_lot ON lot_uses (lot_id);

CREATE TRIGGER lot_uses_append_only BEFORE UPDATE OR DELETE ON lot_uses
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();

-- An expiry is no request an operator can undo: only an earn or a redeem is reversed.
CREATE OR REPLACE FUNCTION refuse_invalid_reversal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    original transactions%ROWTYPE;
BEGIN
    SELECT * INTO original FROM transactions WHERE id = NEW.reverses;
    IF original.type NOT IN ('earn', 'redeem') OR original.status <> 'applied'
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
