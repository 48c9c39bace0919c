-- The double-entry points ledger. Runs with search_path = ledger.
--
-- accounts      one member account per (environment, org, user) and one pool
--               account per (environment, org, rule); balance is a running
--               total of the account's entries.
-- transactions  one row per points request, applied or rejected; its id is
--               the transaction id the gateway gave the request.
-- entries       the signed movements of an applied transaction; append-only,
--               and the entries of each transaction sum to zero.

CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment text        NOT NULL CHECK (environment IN ('staging', 'production')),
    org_id      text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('member', 'pool')),
    -- the user id of a member account, the rule id of a pool account
    owner_id    text        NOT NULL,
    balance     bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_owner_unique UNIQUE (environment, org_id, kind, owner_id),
    -- A pool may go negative (it counts the points its rule issued); a member never.
    CONSTRAINT member_balance_not_negative CHECK (kind <> 'member' OR balance >= 0)
);

CREATE TABLE transactions (
    id             uuid        PRIMARY KEY,
    -- insertion order, for newest-first history and its cursor
    seq            bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    environment    text        NOT NULL CHECK (environment IN ('staging', 'production')),
    org_id         text        NOT NULL,
    user_id        text        NOT NULL,
    request_id     text        NOT NULL,
    client_id      text        NOT NULL,
    rule_id        text        NOT NULL,
    rule_version   integer     NOT NULL,
    correlation_id text        NOT NULL,
    type           text        NOT NULL CHECK (type IN ('earn', 'redeem')),
    amount         bigint      NOT NULL CHECK (amount > 0),
    status         text        NOT NULL CHECK (status IN ('applied', 'rejected')),
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_request_unique UNIQUE (client_id, request_id),
    CONSTRAINT rejection_has_reason CHECK ((status = 'rejected') = (reason IS NOT NULL))
);

CREATE INDEX transactions_member_history
    ON transactions (environment, org_id, user_id, seq DESC);

CREATE TABLE entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid   NOT NULL REFERENCES transactions (id),
    account_id     bigint NOT NULL REFERENCES accounts (id),
    amount         bigint NOT NULL CHECK (amount <> 0),
    CONSTRAINT entries_one_per_account UNIQUE (transaction_id, account_id)
);

CREATE INDEX entries_account ON entries (account_id);

-- History is never rewritten: a correction is a new transaction.
CREATE FUNCTION refuse_ledger_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_rewrite();

-- Every statement that adds entries must add, per transaction, entries that
-- sum to zero. Since entries are never changed or removed, every
-- transaction's entries then always sum to zero.
CREATE FUNCTION refuse_unbalanced_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced uuid;
BEGIN
    SELECT transaction_id INTO unbalanced
    FROM added GROUP BY transaction_id HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entries of transaction % do not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER entries_balanced AFTER INSERT ON entries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_unbalanced_entries();
