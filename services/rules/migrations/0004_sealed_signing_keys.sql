-- Private signing keys are stored sealed (AES-256-GCM under the service's
-- key-encryption key); the service seals rows written in the clear by an
-- older release when it starts. Runs with search_path = rules.
ALTER TABLE signing_keys RENAME COLUMN private_pem TO sealed_private_key;
