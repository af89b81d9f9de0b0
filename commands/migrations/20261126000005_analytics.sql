-- Analytics: documented, read-only views over the read models for BI tools
-- (docs/analytics.md). Pseudonymous: rows carry user, class and exercise ids, never names,
-- emails, answers, card texts, chat text or failure messages. Days are UTC calendar days.
--
-- The views do not name read_model tables themselves: they read them through the
-- `analytics.source_*` functions below. A view on a table pins that table (DROP TABLE fails,
-- or CASCADE drops the view), and a projection rebuild replaces its tables by dropping the
-- live ones and moving the rebuilt ones in; functions with a string body resolve the table by
-- name at each call, so rebuilds and these views never get in each other's way.
--
-- The source functions are SECURITY DEFINER (they run with their owner's rights, as a view
-- would) and return only pseudonymous columns, so the read-only role `teachin_analytics`
-- needs USAGE on this schema, SELECT on the views and EXECUTE on the sources, and nothing on
-- `read_model` or `public`.

CREATE SCHEMA IF NOT EXISTS analytics;
COMMENT ON SCHEMA analytics IS
    'Pseudonymous, read-only views over the read models for BI tools. See docs/analytics.md.';

-- Sources: one per read model, pseudonymous columns only ---------------------------------

CREATE FUNCTION analytics.source_attempts()
    RETURNS TABLE (attempt_id uuid, exercise_id uuid, student_id uuid, game_type text,
                   difficulty text, attempt_number integer, correct boolean,
                   accuracy numeric, created_at timestamptz, cleared_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT attempt_id, exercise_id, student_id, game_type, difficulty, attempt_number, correct,
           accuracy, created_at, cleared_at
    FROM read_model.attempts
$$;

CREATE FUNCTION analytics.source_word_cards()
    RETURNS TABLE (card_id uuid, owner_id uuid, is_learned boolean, created_at timestamptz,
                   learned_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT card_id, owner_id, is_learned, created_at, learned_at FROM read_model.word_cards
$$;

CREATE FUNCTION analytics.source_user_achievements()
    RETURNS TABLE (user_id uuid, achievement_key text, feature text, target integer,
                   unlocked_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT user_id, achievement_key, feature, target, unlocked_at
    FROM read_model.user_achievements
$$;

-- One row per message a student sent (a message may be stored as several parts).
CREATE FUNCTION analytics.source_student_messages()
    RETURNS TABLE (student_id uuid, session_id uuid, session_kind text, event_sequence bigint,
                   created_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.student_id, m.session_id, s.kind, m.event_sequence, min(m.created_at)
    FROM read_model.tutor_messages m
    JOIN read_model.tutor_sessions s ON s.session_id = m.session_id
    WHERE m.role = 'student'
    GROUP BY s.student_id, m.session_id, s.kind, m.event_sequence
$$;

CREATE FUNCTION analytics.source_ai_requests()
    RETURNS TABLE (request_id uuid, session_id uuid, student_id uuid, kind text,
                   requested_at timestamptz, completed_at timestamptz, failed_at timestamptz,
                   model text, prompt_tokens integer, completion_tokens integer,
                   latency_ms bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT request_id, session_id, student_id, kind, requested_at, completed_at, failed_at,
           model, prompt_tokens, completion_tokens, latency_ms
    FROM read_model.ai_requests
$$;

CREATE FUNCTION analytics.source_class_students()
    RETURNS TABLE (classroom_id uuid, user_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT classroom_id, user_id FROM read_model.classroom_members WHERE role = 'Student'
$$;

CREATE FUNCTION analytics.source_registrations()
    RETURNS TABLE (user_id uuid, role text, registered_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT user_id, role, registered_at FROM read_model.users
$$;

-- Building blocks ------------------------------------------------------------------------

CREATE VIEW analytics.practice_attempts AS
SELECT a.attempt_id,
       a.exercise_id,
       a.student_id,
       a.game_type,
       a.difficulty,
       a.attempt_number,
       a.correct,
       a.accuracy,
       a.created_at,
       (a.created_at AT TIME ZONE 'UTC')::date AS day,
       a.cleared_at,
       (NOT a.correct AND a.cleared_at IS NULL) AS open_mistake
FROM analytics.source_attempts() a;
COMMENT ON VIEW analytics.practice_attempts IS
    'One row per practice attempt, without the given answer. Period-summary building block: filter on created_at or day.';
COMMENT ON COLUMN analytics.practice_attempts.attempt_id IS 'The attempt.';
COMMENT ON COLUMN analytics.practice_attempts.exercise_id IS 'The exercise it answered (several attempts may answer one exercise).';
COMMENT ON COLUMN analytics.practice_attempts.student_id IS 'Pseudonymous id of the student.';
COMMENT ON COLUMN analytics.practice_attempts.game_type IS 'WordOrder | TypingPractice | SpeakingPractice.';
COMMENT ON COLUMN analytics.practice_attempts.difficulty IS 'Easy | Medium | Hard.';
COMMENT ON COLUMN analytics.practice_attempts.attempt_number IS '1 for the first attempt at the exercise, 2 for the first retry, and so on.';
COMMENT ON COLUMN analytics.practice_attempts.correct IS 'Whether the attempt was graded a success.';
COMMENT ON COLUMN analytics.practice_attempts.accuracy IS 'Grading accuracy, 0 to 100.';
COMMENT ON COLUMN analytics.practice_attempts.created_at IS 'When the attempt was made.';
COMMENT ON COLUMN analytics.practice_attempts.day IS 'UTC date of created_at.';
COMMENT ON COLUMN analytics.practice_attempts.cleared_at IS 'For a failed attempt: when a later attempt at the same exercise succeeded; NULL while uncorrected.';
COMMENT ON COLUMN analytics.practice_attempts.open_mistake IS 'A failed attempt that no later attempt has corrected.';

CREATE VIEW analytics.word_card_activity AS
SELECT w.card_id,
       w.owner_id AS user_id,
       w.created_at,
       (w.created_at AT TIME ZONE 'UTC')::date AS created_day,
       w.is_learned,
       w.learned_at,
       (w.learned_at AT TIME ZONE 'UTC')::date AS learned_day
FROM analytics.source_word_cards() w;
COMMENT ON VIEW analytics.word_card_activity IS
    'One row per word card, without its texts: when it was added and whether and when it was learned. Period-summary building block.';
COMMENT ON COLUMN analytics.word_card_activity.card_id IS 'The card.';
COMMENT ON COLUMN analytics.word_card_activity.user_id IS 'Pseudonymous id of the card''s owner.';
COMMENT ON COLUMN analytics.word_card_activity.created_at IS 'When the card was added.';
COMMENT ON COLUMN analytics.word_card_activity.created_day IS 'UTC date of created_at.';
COMMENT ON COLUMN analytics.word_card_activity.is_learned IS 'Whether the card is currently marked learned.';
COMMENT ON COLUMN analytics.word_card_activity.learned_at IS 'When it was last marked learned; NULL if not learned.';
COMMENT ON COLUMN analytics.word_card_activity.learned_day IS 'UTC date of learned_at.';

CREATE VIEW analytics.achievement_unlocks AS
SELECT ua.user_id,
       ua.achievement_key,
       ua.feature,
       ua.target,
       ua.unlocked_at,
       (ua.unlocked_at AT TIME ZONE 'UTC')::date AS day
FROM analytics.source_user_achievements() ua;
COMMENT ON VIEW analytics.achievement_unlocks IS
    'One row per achievement a user unlocked. Period-summary building block.';
COMMENT ON COLUMN analytics.achievement_unlocks.user_id IS 'Pseudonymous id of the user.';
COMMENT ON COLUMN analytics.achievement_unlocks.achievement_key IS 'Catalog key, e.g. word_cards_3.';
COMMENT ON COLUMN analytics.achievement_unlocks.feature IS 'The counted feature, e.g. WordCards.';
COMMENT ON COLUMN analytics.achievement_unlocks.target IS 'The count of uses that unlocked it.';
COMMENT ON COLUMN analytics.achievement_unlocks.unlocked_at IS 'When it was unlocked.';
COMMENT ON COLUMN analytics.achievement_unlocks.day IS 'UTC date of unlocked_at.';

CREATE VIEW analytics.tutor_message_activity AS
SELECT m.student_id,
       m.session_id,
       m.session_kind,
       m.event_sequence,
       m.created_at,
       (m.created_at AT TIME ZONE 'UTC')::date AS day
FROM analytics.source_student_messages() m;
COMMENT ON VIEW analytics.tutor_message_activity IS
    'One row per message a student sent to the AI tutor, without its text.';
COMMENT ON COLUMN analytics.tutor_message_activity.student_id IS 'Pseudonymous id of the student.';
COMMENT ON COLUMN analytics.tutor_message_activity.session_id IS 'The tutor session (chat thread).';
COMMENT ON COLUMN analytics.tutor_message_activity.session_kind IS 'default | global | explain_mistake.';
COMMENT ON COLUMN analytics.tutor_message_activity.event_sequence IS 'Position of the message in its session.';
COMMENT ON COLUMN analytics.tutor_message_activity.created_at IS 'When the message was sent.';
COMMENT ON COLUMN analytics.tutor_message_activity.day IS 'UTC date of created_at.';

-- Daily activity -------------------------------------------------------------------------

CREATE VIEW analytics.student_daily_activity AS
WITH practice AS (
    SELECT student_id, day,
           count(*) AS attempts,
           count(*) FILTER (WHERE correct) AS successes,
           avg(accuracy) AS accuracy_avg
    FROM analytics.practice_attempts
    GROUP BY student_id, day
), cards AS (
    SELECT user_id AS student_id, created_day AS day, count(*) AS word_cards_added
    FROM analytics.word_card_activity
    GROUP BY user_id, created_day
), tutor AS (
    SELECT student_id, day, count(*) AS tutor_messages
    FROM analytics.tutor_message_activity
    GROUP BY student_id, day
), keys AS (
    SELECT student_id, day FROM practice
    UNION SELECT student_id, day FROM cards
    UNION SELECT student_id, day FROM tutor
)
SELECT k.student_id,
       k.day,
       coalesce(p.attempts, 0) AS attempts,
       coalesce(p.successes, 0) AS successes,
       round(p.accuracy_avg, 2) AS accuracy_avg,
       coalesce(c.word_cards_added, 0) AS word_cards_added,
       coalesce(t.tutor_messages, 0) AS tutor_messages
FROM keys k
LEFT JOIN practice p ON p.student_id = k.student_id AND p.day = k.day
LEFT JOIN cards c ON c.student_id = k.student_id AND c.day = k.day
LEFT JOIN tutor t ON t.student_id = k.student_id AND t.day = k.day;
COMMENT ON VIEW analytics.student_daily_activity IS
    'Per user and UTC day with any activity: practice attempts, successes, average accuracy, word cards added and messages sent to the tutor.';
COMMENT ON COLUMN analytics.student_daily_activity.student_id IS 'Pseudonymous id of the user (students, and anyone else who practised or added cards).';
COMMENT ON COLUMN analytics.student_daily_activity.day IS 'UTC date.';
COMMENT ON COLUMN analytics.student_daily_activity.attempts IS 'Practice attempts made that day.';
COMMENT ON COLUMN analytics.student_daily_activity.successes IS 'Of those, graded successes.';
COMMENT ON COLUMN analytics.student_daily_activity.accuracy_avg IS 'Average accuracy (0-100) of that day''s attempts; NULL without attempts.';
COMMENT ON COLUMN analytics.student_daily_activity.word_cards_added IS 'Word cards added that day.';
COMMENT ON COLUMN analytics.student_daily_activity.tutor_messages IS 'Messages sent to the AI tutor that day.';

CREATE VIEW analytics.class_daily_activity AS
WITH members AS (
    SELECT classroom_id, user_id FROM analytics.source_class_students()
), activity AS (
    SELECT m.classroom_id, d.day,
           count(*) AS active_students,
           sum(d.word_cards_added)::bigint AS word_cards_added,
           sum(d.tutor_messages)::bigint AS tutor_messages
    FROM members m
    JOIN analytics.student_daily_activity d ON d.student_id = m.user_id
    GROUP BY m.classroom_id, d.day
), practice AS (
    SELECT m.classroom_id, a.day,
           count(*) AS attempts,
           count(*) FILTER (WHERE a.correct) AS successes,
           round(avg(a.accuracy), 2) AS accuracy_avg
    FROM members m
    JOIN analytics.practice_attempts a ON a.student_id = m.user_id
    GROUP BY m.classroom_id, a.day
)
SELECT x.classroom_id,
       x.day,
       x.active_students,
       coalesce(p.attempts, 0) AS attempts,
       coalesce(p.successes, 0) AS successes,
       p.accuracy_avg,
       x.word_cards_added,
       x.tutor_messages
FROM activity x
LEFT JOIN practice p ON p.classroom_id = x.classroom_id AND p.day = x.day;
COMMENT ON VIEW analytics.class_daily_activity IS
    'Per classroom and UTC day: the activity of the classroom''s current student members (whenever they joined).';
COMMENT ON COLUMN analytics.class_daily_activity.classroom_id IS 'The classroom.';
COMMENT ON COLUMN analytics.class_daily_activity.day IS 'UTC date.';
COMMENT ON COLUMN analytics.class_daily_activity.active_students IS 'Student members with any activity that day.';
COMMENT ON COLUMN analytics.class_daily_activity.attempts IS 'Practice attempts by student members.';
COMMENT ON COLUMN analytics.class_daily_activity.successes IS 'Of those, graded successes.';
COMMENT ON COLUMN analytics.class_daily_activity.accuracy_avg IS 'Average accuracy (0-100) over all those attempts; NULL without attempts.';
COMMENT ON COLUMN analytics.class_daily_activity.word_cards_added IS 'Word cards added by student members.';
COMMENT ON COLUMN analytics.class_daily_activity.tutor_messages IS 'Tutor messages sent by student members.';

CREATE VIEW analytics.accuracy_trends AS
SELECT day,
       game_type,
       difficulty,
       count(*) AS attempts,
       count(*) FILTER (WHERE correct) AS successes,
       round(count(*) FILTER (WHERE correct)::numeric / count(*), 4) AS success_rate,
       round(avg(accuracy), 2) AS accuracy_avg,
       count(DISTINCT student_id) AS students
FROM analytics.practice_attempts
GROUP BY day, game_type, difficulty;
COMMENT ON VIEW analytics.accuracy_trends IS
    'Per UTC day, game type and difficulty: attempts, success rate and average accuracy across all students.';
COMMENT ON COLUMN analytics.accuracy_trends.day IS 'UTC date.';
COMMENT ON COLUMN analytics.accuracy_trends.game_type IS 'WordOrder | TypingPractice | SpeakingPractice.';
COMMENT ON COLUMN analytics.accuracy_trends.difficulty IS 'Easy | Medium | Hard.';
COMMENT ON COLUMN analytics.accuracy_trends.attempts IS 'Attempts made.';
COMMENT ON COLUMN analytics.accuracy_trends.successes IS 'Of those, graded successes.';
COMMENT ON COLUMN analytics.accuracy_trends.success_rate IS 'successes / attempts, 0 to 1.';
COMMENT ON COLUMN analytics.accuracy_trends.accuracy_avg IS 'Average accuracy, 0 to 100.';
COMMENT ON COLUMN analytics.accuracy_trends.students IS 'Distinct students who made them.';

CREATE VIEW analytics.mistake_patterns AS
SELECT game_type,
       difficulty,
       count(*) AS uncleared_failed_attempts,
       count(DISTINCT exercise_id) AS exercises_affected,
       count(DISTINCT student_id) AS students_affected,
       round(avg(accuracy), 2) AS accuracy_avg,
       min(created_at) AS oldest_at,
       max(created_at) AS newest_at
FROM analytics.practice_attempts
WHERE open_mistake
GROUP BY game_type, difficulty;
COMMENT ON VIEW analytics.mistake_patterns IS
    'Per game type and difficulty: failed attempts that no later attempt has corrected, and how many exercises and students they touch.';
COMMENT ON COLUMN analytics.mistake_patterns.game_type IS 'WordOrder | TypingPractice | SpeakingPractice.';
COMMENT ON COLUMN analytics.mistake_patterns.difficulty IS 'Easy | Medium | Hard.';
COMMENT ON COLUMN analytics.mistake_patterns.uncleared_failed_attempts IS 'Failed attempts still uncorrected.';
COMMENT ON COLUMN analytics.mistake_patterns.exercises_affected IS 'Distinct exercises with such attempts.';
COMMENT ON COLUMN analytics.mistake_patterns.students_affected IS 'Distinct students with such attempts.';
COMMENT ON COLUMN analytics.mistake_patterns.accuracy_avg IS 'Average accuracy of those attempts, 0 to 100.';
COMMENT ON COLUMN analytics.mistake_patterns.oldest_at IS 'The oldest such attempt.';
COMMENT ON COLUMN analytics.mistake_patterns.newest_at IS 'The newest such attempt.';

CREATE VIEW analytics.achievements_daily AS
SELECT day,
       achievement_key,
       feature,
       count(*) AS unlocked
FROM analytics.achievement_unlocks
GROUP BY day, achievement_key, feature;
COMMENT ON VIEW analytics.achievements_daily IS
    'Per UTC day and achievement: how many users unlocked it.';
COMMENT ON COLUMN analytics.achievements_daily.day IS 'UTC date.';
COMMENT ON COLUMN analytics.achievements_daily.achievement_key IS 'Catalog key, e.g. word_cards_3.';
COMMENT ON COLUMN analytics.achievements_daily.feature IS 'The counted feature.';
COMMENT ON COLUMN analytics.achievements_daily.unlocked IS 'Users who unlocked it that day.';

CREATE VIEW analytics.ai_usage_daily AS
SELECT (r.requested_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(r.model, 'unknown') AS model,
       count(*) AS requests,
       count(*) FILTER (WHERE r.completed_at IS NOT NULL) AS completed,
       count(*) FILTER (WHERE r.failed_at IS NOT NULL) AS failed,
       count(*) FILTER (WHERE r.completed_at IS NULL AND r.failed_at IS NULL) AS pending,
       coalesce(sum(r.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(r.completion_tokens), 0)::bigint AS completion_tokens,
       round(avg(r.latency_ms), 1) AS avg_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms) AS p95_latency_ms,
       count(DISTINCT r.student_id) AS students
FROM analytics.source_ai_requests() r
GROUP BY 1, 2;
COMMENT ON VIEW analytics.ai_usage_daily IS
    'Per UTC day (of the request) and model: AI requests, how they ended, tokens and latency.';
COMMENT ON COLUMN analytics.ai_usage_daily.day IS 'UTC date the requests were made.';
COMMENT ON COLUMN analytics.ai_usage_daily.model IS 'The model that answered; unknown while pending or when the failure came before a model was chosen.';
COMMENT ON COLUMN analytics.ai_usage_daily.requests IS 'Requests made.';
COMMENT ON COLUMN analytics.ai_usage_daily.completed IS 'Of those, completed.';
COMMENT ON COLUMN analytics.ai_usage_daily.failed IS 'Of those, failed.';
COMMENT ON COLUMN analytics.ai_usage_daily.pending IS 'Of those, neither completed nor failed yet.';
COMMENT ON COLUMN analytics.ai_usage_daily.prompt_tokens IS 'Prompt tokens used.';
COMMENT ON COLUMN analytics.ai_usage_daily.completion_tokens IS 'Completion tokens used.';
COMMENT ON COLUMN analytics.ai_usage_daily.avg_latency_ms IS 'Average latency in milliseconds of requests with a measured latency.';
COMMENT ON COLUMN analytics.ai_usage_daily.p95_latency_ms IS '95th percentile latency in milliseconds (interpolated).';
COMMENT ON COLUMN analytics.ai_usage_daily.students IS 'Distinct students who made requests.';

CREATE VIEW analytics.registrations_daily AS
SELECT (registered_at AT TIME ZONE 'UTC')::date AS day,
       role,
       count(*) AS registrations
FROM analytics.source_registrations()
GROUP BY 1, 2;
COMMENT ON VIEW analytics.registrations_daily IS 'Per UTC day and role: users who registered.';
COMMENT ON COLUMN analytics.registrations_daily.day IS 'UTC date of registration.';
COMMENT ON COLUMN analytics.registrations_daily.role IS 'Student | Teacher | Admin (current role).';
COMMENT ON COLUMN analytics.registrations_daily.registrations IS 'Users who registered that day.';

-- The read-only role ---------------------------------------------------------------------
-- Roles are cluster-wide and every database migrates, possibly at the same moment: create it
-- only when missing, and treat losing the race as success. LOGIN without a password: an
-- operator sets one (ALTER ROLE teachin_analytics PASSWORD '...').

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'teachin_analytics') THEN
        CREATE ROLE teachin_analytics LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA analytics FROM PUBLIC;
GRANT USAGE ON SCHEMA analytics TO teachin_analytics;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO teachin_analytics;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA analytics TO teachin_analytics;
