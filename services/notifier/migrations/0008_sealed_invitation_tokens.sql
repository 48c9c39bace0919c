-- Invitation e-mails: their message is stored with a placeholder where the
-- link's token goes, and the token sealed beside it (INVITATION_SEALING_KEY),
-- so this table never holds a token in the clear; the sender opens it only to
-- compose the bytes it hands to the SMTP server.

ALTER TABLE deliveries ADD COLUMN sealed_secret text;
