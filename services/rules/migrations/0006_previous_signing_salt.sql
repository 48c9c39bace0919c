-- A rotated client's callbacks are signed with its new and its previous
-- callback-signing secret until the overlap ends (previous_valid_until), so a
-- partner can deploy the new secret without missing a callback. Only the
-- previous public salt is kept: the secret itself is never stored.
-- Runs with search_path = rules.

ALTER TABLE api_clients ADD COLUMN previous_signing_key_salt text;
