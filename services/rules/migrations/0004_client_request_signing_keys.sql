-- The public key with which an API client signs its requests to the gateway
-- (PEM SubjectPublicKeyInfo), or null when it does not sign them. Public by
-- nature, so kept as it is. Runs with search_path = rules.

ALTER TABLE api_clients ADD COLUMN request_signing_key text;
