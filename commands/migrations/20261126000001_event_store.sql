-- The event store: postgres-es's `events` and `snapshots` tables, extended for a gap-safe
-- global log (DESIGN.md decision 1). postgres-es names its columns on insert, so the extra
-- columns below fill themselves from their defaults.

CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         jsonb                        NOT NULL,
    metadata        jsonb                        NOT NULL,
    -- Order of insertion across all streams. Not commit order: see transaction_id.
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    -- The inserting transaction. A reader that only takes rows whose transaction is older
    -- than every running one never skips a row committed late by a slow transaction.
    transaction_id  xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz                  NOT NULL DEFAULT now(),
    -- Stable identity of one event, the dedupe key for at-least-once consumers.
    event_id        uuid                         NOT NULL DEFAULT gen_random_uuid(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_global_position ON events (global_position);
CREATE UNIQUE INDEX events_event_id ON events (event_id);
-- The log reader's order: (transaction_id, global_position).
CREATE INDEX events_log_order ON events (transaction_id, global_position);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          jsonb                                NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Wake log subscribers on commit (NOTIFY is delivered at commit, once per transaction and
-- payload). Subscribers poll as well, so a lost notification only costs latency.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('teachin_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- One row per command that appended events, written by a trigger in the same transaction
-- as the events. It makes a repeated command (same idempotency key, or the same command id
-- retried after an ambiguous failure) detectable and lets it return the first result.
CREATE TABLE command_receipts
(
    dedupe_key     text        PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    first_sequence bigint      NOT NULL,
    last_sequence  bigint      NOT NULL,
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION record_command_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key text;
BEGIN
    key := CASE
        WHEN NEW.metadata ? 'idempotency_key'
            THEN 'idem:' || (NEW.metadata ->> 'issued_by') || ':' || (NEW.metadata ->> 'idempotency_key')
        ELSE 'cmd:' || (NEW.metadata ->> 'command_id')
    END;
    IF key IS NULL THEN
        RETURN NEW; -- events written outside the command bus (none in practice)
    END IF;
    INSERT INTO command_receipts (dedupe_key, aggregate_type, aggregate_id, first_sequence, last_sequence)
    VALUES (key, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.sequence)
    ON CONFLICT (dedupe_key) DO UPDATE SET last_sequence = EXCLUDED.last_sequence
        WHERE command_receipts.transaction_id = pg_current_xact_id()
          AND command_receipts.aggregate_type = EXCLUDED.aggregate_type
          AND command_receipts.aggregate_id = EXCLUDED.aggregate_id;
    IF NOT FOUND THEN
        -- Another transaction already appended this command: report it as the optimistic
        -- concurrency conflict postgres-es understands, and let the bus return the receipt.
        RAISE EXCEPTION 'command % was already applied', key USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER events_command_receipt BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION record_command_receipt();
