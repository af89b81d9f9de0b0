-- Dead letters keep what an operator needs and no personal data (issue 15 §4).
--
-- A dead letter is kept for days (until `teachin cron purge-bus`), read by operators and
-- copied into support tickets, so it must not carry an email address, a name or a message
-- text. Both bus backends park dead letters in `bus_dead_letters`, so the rule lives on the
-- table, where no insert path can miss it:
-- - The body keeps its shape, numbers, booleans and nulls, and only the strings an
--   operator needs to find the work again: identifiers (keys `id`, `…Id`, `…_id`, and
--   `requester`, a user id) and the closed vocabularies of the contracts
--   (`teachin_workers::contracts`: `kind`, `stage`, `model`, `gameType`, `difficulty`,
--   `tool`, `requestedAt`). Every other string — an address, a subject, a body, a reply, a
--   prompt, a sentence, a title, a reason a model wrote — becomes "[redacted]". An allowlist
--   rather than a list of personal fields: a field added later is redacted until someone
--   decides it is not personal. Requests (ids only) stay resubmittable as they were;
--   a redacted result or email resubmitted is refused by its handler or records the
--   placeholder, so the operator's remedy for those is the log, not the dead letter.
-- - A body that is not JSON is replaced whole.
-- - Email addresses in the error description and in the properties (a retry copy's last
--   error) become "[address]": an SMTP refusal names the mailbox it refused.
-- Existing dead letters are redacted by this migration too.

CREATE FUNCTION bus_redact_json(value jsonb, key text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    result jsonb;
BEGIN
    CASE jsonb_typeof(value)
        WHEN 'object' THEN
            SELECT coalesce(jsonb_object_agg(k, bus_redact_json(v, k)), '{}'::jsonb)
              INTO result FROM jsonb_each(value) AS e(k, v);
            RETURN result;
        WHEN 'array' THEN
            -- Elements are what their field holds: they inherit its key.
            SELECT coalesce(jsonb_agg(bus_redact_json(v, key) ORDER BY i), '[]'::jsonb)
              INTO result FROM jsonb_array_elements(value) WITH ORDINALITY AS e(v, i);
            RETURN result;
        WHEN 'string' THEN
            IF key IS NOT NULL AND (
                key = 'id' OR key ~ '(Id|_id)$' OR key = ANY (ARRAY[
                    'requester', 'kind', 'stage', 'model', 'gameType', 'difficulty', 'tool',
                    'requestedAt'])) THEN
                RETURN value;
            END IF;
            RETURN to_jsonb('[redacted]'::text);
        ELSE
            RETURN value;
    END CASE;
END
$$;

CREATE FUNCTION bus_redact_addresses(value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(value, '[^[:space:]<>"''(),;:]+@[^[:space:]<>"''(),;:]+',
                          '[address]', 'g')
$$;

CREATE FUNCTION bus_dead_letters_redact() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    parsed jsonb;
BEGIN
    BEGIN
        parsed := NEW.body::jsonb;
    EXCEPTION WHEN others THEN
        parsed := NULL;
    END;
    NEW.body := CASE
        WHEN parsed IS NULL THEN '"[redacted: not JSON]"'
        ELSE bus_redact_json(parsed, NULL)::text
    END;
    NEW.description := bus_redact_addresses(NEW.description);
    SELECT coalesce(jsonb_object_agg(k, CASE jsonb_typeof(v)
                        WHEN 'string' THEN to_jsonb(bus_redact_addresses(v #>> '{}'))
                        ELSE v END), '{}'::jsonb)
      INTO NEW.properties FROM jsonb_each(NEW.properties) AS e(k, v);
    RETURN NEW;
END
$$;

CREATE TRIGGER bus_dead_letters_redact
    BEFORE INSERT OR UPDATE ON bus_dead_letters
    FOR EACH ROW EXECUTE FUNCTION bus_dead_letters_redact();

UPDATE bus_dead_letters SET body = body;

-- The purge (`teachin cron purge-bus`) deletes by age.
CREATE INDEX bus_dead_letters_age ON bus_dead_letters (dead_lettered_at);
