-- Content generation (sentences, word explanations, email drafts) in the AI-usage analytics.
-- Until now `analytics.ai_usage_daily` counted only the tutor's requests: the engine's other
-- AI calls had no read model.

-- Every generation request and how it ended (projection `ai_generations`).
CREATE TABLE read_model.ai_generations
(
    request_id        uuid        PRIMARY KEY,
    requester_id      uuid        NOT NULL,
    -- sentences | word_explanation | email_draft
    task              text        NOT NULL,
    requested_at      timestamptz NOT NULL,
    completed_at      timestamptz,
    failed_at         timestamptz,
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    latency_ms        bigint,
    failure           text
);
CREATE INDEX ai_generations_requested_at ON read_model.ai_generations (requested_at);

CREATE FUNCTION analytics.source_ai_generations()
    RETURNS TABLE (request_id uuid, requester_id uuid, task text, requested_at timestamptz,
                   completed_at timestamptz, failed_at timestamptz, model text,
                   prompt_tokens integer, completion_tokens integer, latency_ms bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT request_id, requester_id, task, requested_at, completed_at, failed_at, model,
           prompt_tokens, completion_tokens, latency_ms
    FROM read_model.ai_generations
$$;

-- Every AI call, whatever asked for it: the tutor's (reply | mistake_explanation) and the
-- generation tasks'. `requester_id` is the student for the tutor, whoever asked otherwise.
CREATE VIEW analytics.ai_calls AS
SELECT r.request_id, CASE r.kind WHEN 'reply' THEN 'tutor_reply' ELSE r.kind END AS feature,
       r.student_id AS requester_id, r.requested_at, r.completed_at, r.failed_at, r.model,
       r.prompt_tokens, r.completion_tokens, r.latency_ms
FROM analytics.source_ai_requests() r
UNION ALL
SELECT g.request_id, g.task, g.requester_id, g.requested_at, g.completed_at, g.failed_at,
       g.model, g.prompt_tokens, g.completion_tokens, g.latency_ms
FROM analytics.source_ai_generations() g;
COMMENT ON VIEW analytics.ai_calls IS
    'Building block: one row per AI request (tutor replies, mistake explanations, sentence generation, word explanations, email drafts), without any text.';
COMMENT ON COLUMN analytics.ai_calls.request_id IS 'The request.';
COMMENT ON COLUMN analytics.ai_calls.feature IS 'tutor_reply | mistake_explanation | sentences | word_explanation | email_draft.';
COMMENT ON COLUMN analytics.ai_calls.requester_id IS 'Pseudonymous id of who asked: the student for the tutor, the requesting user for generation.';
COMMENT ON COLUMN analytics.ai_calls.requested_at IS 'When it was asked for.';
COMMENT ON COLUMN analytics.ai_calls.completed_at IS 'When it completed; NULL otherwise.';
COMMENT ON COLUMN analytics.ai_calls.failed_at IS 'When it failed; NULL otherwise.';
COMMENT ON COLUMN analytics.ai_calls.model IS 'The model that answered; NULL while pending or when the failure came before a model was chosen.';
COMMENT ON COLUMN analytics.ai_calls.prompt_tokens IS 'Prompt tokens used.';
COMMENT ON COLUMN analytics.ai_calls.completion_tokens IS 'Completion tokens used.';
COMMENT ON COLUMN analytics.ai_calls.latency_ms IS 'Latency in milliseconds, when measured.';

-- Same columns as before, now over every AI call.
CREATE OR REPLACE VIEW analytics.ai_usage_daily AS
SELECT (c.requested_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(c.model, 'unknown') AS model,
       count(*) AS requests,
       count(*) FILTER (WHERE c.completed_at IS NOT NULL) AS completed,
       count(*) FILTER (WHERE c.failed_at IS NOT NULL) AS failed,
       count(*) FILTER (WHERE c.completed_at IS NULL AND c.failed_at IS NULL) AS pending,
       coalesce(sum(c.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(c.completion_tokens), 0)::bigint AS completion_tokens,
       round(avg(c.latency_ms), 1) AS avg_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY c.latency_ms) AS p95_latency_ms,
       count(DISTINCT c.requester_id) AS students
FROM analytics.ai_calls c
GROUP BY 1, 2;
COMMENT ON VIEW analytics.ai_usage_daily IS
    'Per UTC day (of the request) and model: AI requests of every feature (tutor and content generation), how they ended, tokens and latency. Per feature: ai_usage_by_feature_daily.';
COMMENT ON COLUMN analytics.ai_usage_daily.students IS 'Distinct users who made requests (students for the tutor; teachers too for generation).';

CREATE VIEW analytics.ai_usage_by_feature_daily AS
SELECT (c.requested_at AT TIME ZONE 'UTC')::date AS day,
       c.feature,
       coalesce(c.model, 'unknown') AS model,
       count(*) AS requests,
       count(*) FILTER (WHERE c.completed_at IS NOT NULL) AS completed,
       count(*) FILTER (WHERE c.failed_at IS NOT NULL) AS failed,
       coalesce(sum(c.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(c.completion_tokens), 0)::bigint AS completion_tokens,
       round(avg(c.latency_ms), 1) AS avg_latency_ms
FROM analytics.ai_calls c
GROUP BY 1, 2, 3;
COMMENT ON VIEW analytics.ai_usage_by_feature_daily IS
    'Per UTC day, feature and model: AI requests, how they ended, tokens and average latency.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.day IS 'UTC date the requests were made.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.feature IS 'tutor_reply | mistake_explanation | sentences | word_explanation | email_draft.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.model IS 'The model that answered; unknown while pending or when the failure came before a model was chosen.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.requests IS 'Requests made.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.completed IS 'Of those, completed.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.failed IS 'Of those, failed.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.prompt_tokens IS 'Prompt tokens used.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.completion_tokens IS 'Completion tokens used.';
COMMENT ON COLUMN analytics.ai_usage_by_feature_daily.avg_latency_ms IS 'Average latency in milliseconds of requests with a measured latency.';

-- As for every source: nobody but the owner and the analytics role runs it.
REVOKE ALL ON FUNCTION analytics.source_ai_generations() FROM PUBLIC;
GRANT SELECT ON analytics.ai_calls, analytics.ai_usage_by_feature_daily TO teachin_analytics;
GRANT EXECUTE ON FUNCTION analytics.source_ai_generations() TO teachin_analytics;
