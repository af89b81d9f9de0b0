-- The message bus's PostgreSQL backend and the consumers' bookkeeping.
-- Owner: teachin-workers (workers/src/bus/postgres.rs, workers/src/consumer.rs).
--
-- The bus is the `postgres` backend of DESIGN.md decision 4: a durable queue with peek-lock
-- (a lock token and a visibility deadline), delivery counts and a dead-letter store that
-- keeps the reason. Many workers take messages with `FOR UPDATE SKIP LOCKED`, so they never
-- wait on, nor take, each other's messages. Nothing here touches the event store: the outbox
-- relay derives messages from the log and sends them through the bus like any producer.

-- Messages waiting in, or locked out of, a queue. `visible_at` is when a receiver may take the
-- message: its enqueue time at first, then the end of each lock. A receiver that takes it sets
-- a fresh `lock_token` and `locked_until` and counts the delivery.
CREATE TABLE bus_messages (
    sequence_number bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue           text        NOT NULL,
    message_id      text        NOT NULL,
    correlation_id  text,
    action          text        NOT NULL,
    body            text        NOT NULL,
    properties      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    visible_at      timestamptz NOT NULL DEFAULT now(),
    delivery_count  integer     NOT NULL DEFAULT 0,
    lock_token      uuid,
    locked_until    timestamptz,
    UNIQUE (queue, message_id)
);
-- Receivers scan a queue in sequence order for the first visible message.
CREATE INDEX bus_messages_next ON bus_messages (queue, sequence_number);

-- Every message id a queue has accepted, so that sending the same id again (the outbox relay
-- after a crash between send and checkpoint) enqueues nothing: Service Bus's duplicate
-- detection, kept here until purged (a retention window, as the broker's history window).
CREATE TABLE bus_message_ids (
    queue      text        NOT NULL,
    message_id text        NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, message_id)
);

-- Messages taken out of circulation, with why. The PostgreSQL backend moves a message here
-- when a consumer dead-letters it or when its delivery count is used up; the Service Bus
-- backend parks here what a consumer dead-letters explicitly (the REST API has no
-- dead-letter operation; the broker's own `$DeadLetterQueue` holds the rest).
CREATE TABLE bus_dead_letters (
    queue            text        NOT NULL,
    message_id       text        NOT NULL,
    sequence_number  bigint      NOT NULL,
    correlation_id   text,
    action           text        NOT NULL,
    body             text        NOT NULL,
    properties       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    enqueued_at      timestamptz NOT NULL,
    delivery_count   integer     NOT NULL,
    reason           text        NOT NULL,
    description      text        NOT NULL DEFAULT '',
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, message_id)
);

-- What each consumer has finished, by message (or original message) id: a redelivery of a
-- message already handled is completed without running its handler again.
CREATE TABLE bus_processed_messages (
    consumer     text        NOT NULL,
    message_key  text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_key)
);
