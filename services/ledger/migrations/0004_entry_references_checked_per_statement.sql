-- An entry's transaction and account are checked once per inserting statement
-- instead of by foreign keys, whose checks run a query and take a row lock for
-- every entry: with two entries per request they were half the time
-- PostgreSQL spent inserting a batch's entries (make bench-ledger). The
-- guarantee is the same: an entry names a transaction and an account that
-- exist, and as neither can be removed or renumbered afterwards (transactions
-- are append-only, accounts get the triggers below), it always will.
-- Runs with search_path = ledger.

ALTER TABLE entries
    DROP CONSTRAINT entries_transaction_id_fkey,
    DROP CONSTRAINT entries_account_id_fkey;

CREATE FUNCTION refuse_invalid_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced uuid;
    missing_transaction uuid;
    missing_account bigint;
BEGIN
    SELECT transaction_id INTO unbalanced
    FROM added GROUP BY transaction_id HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entries of transaction % do not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT transaction_id INTO missing_transaction FROM added
    WHERE NOT EXISTS (SELECT 1 FROM transactions WHERE transactions.id = added.transaction_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'an entry names transaction %, which does not exist', missing_transaction
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT account_id INTO missing_account FROM added
    WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE accounts.id = added.account_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'an entry names account %, which does not exist', missing_account
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER entries_balanced ON entries;
DROP FUNCTION refuse_unbalanced_entries();
CREATE TRIGGER entries_valid AFTER INSERT ON entries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_invalid_entries();

-- Balances change; an account itself stays as long as the ledger does.
CREATE FUNCTION refuse_account_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'accounts are never removed or renumbered: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER accounts_kept BEFORE DELETE OR UPDATE OF id ON accounts
    FOR EACH ROW EXECUTE FUNCTION refuse_account_removal();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_account_removal();
