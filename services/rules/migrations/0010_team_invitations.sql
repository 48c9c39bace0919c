-- The team: business users are invited by an admin and become active when they
-- set their password through the invitation's one-time link. Only the SHA-256
-- of an invitation's token is stored, so reading this table does not let
-- anyone accept an invitation. Runs with search_path = rules.

ALTER TABLE users
    ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('invited', 'active')),
    ADD COLUMN invited_at timestamptz,
    ADD COLUMN invited_by text,
    ADD COLUMN last_sign_in_at timestamptz,
    ALTER COLUMN password_hash DROP NOT NULL,
    ADD CONSTRAINT users_active_have_a_password
        CHECK (status = 'invited' OR password_hash IS NOT NULL);

-- An organisation's admins, locked together when one may stop being an admin.
CREATE INDEX users_by_org_role ON users (org_id, role);

-- At most one open invitation per invited user: inviting again replaces it.
CREATE TABLE invitations (
    user_id     text PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
