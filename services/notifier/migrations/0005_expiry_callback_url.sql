-- A client may ask for a signed callback when points its requests earned
-- expire (issue 19): the projection keeps the URL it registered, the latest
-- clients.lifecycle.v1 event winning as for the salts. Null when it has not
-- opted in. Runs with search_path = notifier.

ALTER TABLE clients ADD COLUMN expiry_callback_url text;
