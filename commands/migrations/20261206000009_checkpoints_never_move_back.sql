-- Owned by teachin-projections. A checkpoint says "everything up to here has been consumed";
-- moving it back would make its consumer apply events a second time (a counting read model
-- would double, a notification or bus message would go out again). Every writer of the table
-- (live batches, group batches, the feed publisher, the outbox relay, a rebuild's swap) goes
-- through this trigger, so no caller can get it wrong. A consumer that must start over gets a
-- fresh row (DELETE and INSERT), never an UPDATE backwards.

CREATE FUNCTION projection_checkpoint_never_moves_back() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.transaction_id, NEW.global_position) < (OLD.transaction_id, OLD.global_position) THEN
        RAISE EXCEPTION 'checkpoint % would move back from %/% to %/%',
            OLD.name, OLD.transaction_id, OLD.global_position,
            NEW.transaction_id, NEW.global_position
            USING ERRCODE = 'TC001';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER projection_checkpoint_never_moves_back
    BEFORE UPDATE OF transaction_id, global_position ON projection_checkpoints
    FOR EACH ROW EXECUTE FUNCTION projection_checkpoint_never_moves_back();
