-- Projections: one checkpoint row per named subscriber of the log. The row is also the
-- projection's mutex: every batch transaction locks it first (SELECT ... FOR UPDATE), so two
-- daemons, or a daemon and a rebuild's swap, can never apply the same events twice.

CREATE SCHEMA IF NOT EXISTS read_model;

CREATE TABLE projection_checkpoints
(
    name            text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT '0',
    global_position bigint      NOT NULL DEFAULT 0,
    events_applied  bigint      NOT NULL DEFAULT 0,
    -- running | halted
    status          text        NOT NULL DEFAULT 'running',
    -- Set when halted: the event that could not be applied, and why.
    failed_event_id uuid,
    failed_position text,
    failure         text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
