-- Users of the gRPC API and the dashboard. Only the admin boundary's schema has this table.
-- Passwords are stored as argon2id hashes (orisun/service/users.py); roles are ADMIN and/or OPERATIONS.
CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    roles         text[] NOT NULL DEFAULT '{}' CHECK (roles <@ ARRAY['ADMIN', 'OPERATIONS']::text[]),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
