-- The public key each client signs its requests with, projected from
-- clients.lifecycle.v1; null when the client does not sign. Runs with
-- search_path = trigger.

ALTER TABLE clients ADD COLUMN request_signing_key text;
