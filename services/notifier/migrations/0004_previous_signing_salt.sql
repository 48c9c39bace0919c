-- During a client's secret-rotation overlap, its callbacks carry a signature
-- with the previous secret too: the projection keeps that secret's salt and
-- until when it signs. Runs with search_path = notifier.

ALTER TABLE clients
    ADD COLUMN previous_signing_key_salt text,
    ADD COLUMN previous_salt_valid_until timestamptz;
