-- The bus backs off instead of burning retries (issue 14, part 4).
-- Owner: teachin-workers (workers/src/bus/postgres.rs).
--
-- An abandoned message now waits before it is visible again (`visible_at` in the future: the
-- handler's `Retry-After`, else an exponential backoff on its delivery count), and it is
-- dead-lettered only when its retry budget is spent in count *and* in time. The time is
-- counted from `retry_since`: the first enqueue, or the resubmission of a dead letter (which
-- starts a fresh budget, as it starts a fresh delivery count). `last_error` is what the last
-- failed delivery said; a dead letter's description ends with it.
ALTER TABLE bus_messages
    ADD COLUMN retry_since timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error  text;
