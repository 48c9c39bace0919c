-- A rule's history (the console's recent transactions of a rule) is read
-- newest first, a page at a time, like a member's: the index that served the
-- rule's totals gains the order, so a page reads only its own rows. Runs
-- with search_path = ledger.

DROP INDEX transactions_rule;
CREATE INDEX transactions_rule_history ON transactions (environment, org_id, rule_id, seq DESC);
