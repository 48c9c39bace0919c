-- The documented largest balances (contracts/limits.py), as a backstop to the
-- ledger's own check, which settles a request that would pass one as rejected
-- (BALANCE_LIMIT_EXCEEDED) before anything is written. A member holds at most
-- 2^53 - 1 points (exact in every JSON reader); a rule's pool stays within
-- ±2^62, half of bigint's range, so any change a batch makes to it fits a bigint.
--
-- The pool's constraint also catches a race: the ledger decides on a pool's
-- balance as last committed, without locking it, so two batches adding to one
-- pool at once could pass the limit together; the later UPDATE then fails here,
-- and the ledger retries it as transient (ConcurrentUpdateConflict).
--
-- NOT VALID: rows written before the limits existed are not checked now (a
-- balance past a limit from then would stop the upgrade); every change from now
-- on is. operations.md says how to find such rows and validate the constraints.
-- Runs with search_path = ledger.

ALTER TABLE accounts
    ADD CONSTRAINT member_balance_within_limit
        CHECK (kind <> 'member' OR balance <= 9007199254740991) NOT VALID,
    ADD CONSTRAINT pool_balance_within_limit
        CHECK (kind <> 'pool' OR balance BETWEEN -4611686018427387904 AND 4611686018427387904)
        NOT VALID;
