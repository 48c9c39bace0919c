-- Share e-mails go through the same deliveries table as callbacks, so one set
-- of workers, one retry schedule and one operator view cover both. A `kind`
-- column says which; the columns only one kind needs become nullable, and
-- check constraints keep each kind's own columns filled in.

ALTER TABLE deliveries
    ADD COLUMN kind text NOT NULL DEFAULT 'callback' CHECK (kind IN ('callback', 'email')),
    -- An e-mail is sent once per share request, whichever event carried it.
    ADD COLUMN notification_id uuid UNIQUE,
    ADD COLUMN recipients text[];

ALTER TABLE deliveries
    ALTER COLUMN client_id DROP NOT NULL,
    ALTER COLUMN request_id DROP NOT NULL,
    ALTER COLUMN transaction_id DROP NOT NULL,
    ALTER COLUMN url DROP NOT NULL;

ALTER TABLE deliveries
    ADD CONSTRAINT deliveries_callback_columns CHECK (
        kind <> 'callback'
        OR (client_id IS NOT NULL AND request_id IS NOT NULL
            AND transaction_id IS NOT NULL AND url IS NOT NULL)
    ),
    ADD CONSTRAINT deliveries_email_columns CHECK (
        kind <> 'email' OR (notification_id IS NOT NULL AND recipients IS NOT NULL)
    );

-- `failed`: the receiver refused it for good (an SMTP 5xx); retrying cannot help.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'parked', 'failed'));

CREATE INDEX deliveries_by_kind_status ON deliveries (kind, status, updated_at DESC);
