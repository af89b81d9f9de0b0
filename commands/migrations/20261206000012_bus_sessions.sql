-- Sessions on the bus: a session's messages go to one receiver at a time (issue 14, part 6).
-- Owner: teachin-workers (workers/src/bus/postgres.rs, workers/src/bus/servicebus.rs).
--
-- A message may carry a session key (`session_id`; Service Bus's `SessionId`). A receiver
-- that takes a message of session S holds S — a row here, with its holder (one id per bus
-- instance, i.e. per process) and `locked_until` — for the lock's duration, renewed with the
-- message's lock while it works; meanwhile no other receiver takes a message of S (the
-- receive query skips them), and the holder takes S's messages in sequence order. So two
-- manager replicas never split one tutor session's streamed frames between them.
-- The Service Bus adapter keeps its session leases here too (its REST API has no session
-- receivers; see the module comment of workers/src/bus/servicebus.rs), and hands a message
-- of a session another receiver holds over to `bus_messages`, where the holder takes it.
ALTER TABLE bus_messages ADD COLUMN session_id text;
ALTER TABLE bus_dead_letters ADD COLUMN session_id text;

CREATE INDEX bus_messages_session ON bus_messages (queue, session_id, sequence_number)
    WHERE session_id IS NOT NULL;

CREATE TABLE bus_sessions (
    queue        text        NOT NULL,
    session_id   text        NOT NULL,
    holder       uuid        NOT NULL,
    locked_until timestamptz NOT NULL,
    PRIMARY KEY (queue, session_id)
);
