-- Per-client rate limits: operator overrides of the settings' defaults, and
-- the token buckets every gateway replica shares.

CREATE TABLE client_rate_limits (
    client_id  text PRIMARY KEY,
    per_second double precision NOT NULL CHECK (per_second > 0),
    burst      integer NOT NULL CHECK (burst >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- UNLOGGED: a bucket is written on every trigger, and losing them all in a
-- crash only hands every client a full burst again, so they are not worth a
-- WAL record (and a commit flush) per request. The limit in force is copied
-- into the row, so the one statement that takes a token needs no other read.
CREATE UNLOGGED TABLE rate_limit_buckets (
    client_id   text PRIMARY KEY,
    per_second  double precision NOT NULL,
    burst       integer NOT NULL,
    tokens      double precision NOT NULL,
    granted     boolean NOT NULL,
    refilled_at timestamptz NOT NULL
);
