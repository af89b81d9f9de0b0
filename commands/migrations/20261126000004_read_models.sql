-- Read models: what the portals read. Each table belongs to exactly one projection
-- (projections/src/read_models/), which alone writes it; a rebuild recreates a projection's
-- tables with CREATE TABLE ... (LIKE ... INCLUDING ALL), so no foreign keys and no sequences.

-- game_configs: per-game settings of each user.
CREATE TABLE read_model.game_configs
(
    user_id             uuid        NOT NULL,
    game                text        NOT NULL,
    difficulty          text        NOT NULL,
    nikud               boolean     NOT NULL,
    number_of_sentences smallint    NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (user_id, game)
);

-- users (projection `users`): profiles. Personal fields are opened at projection time and
-- cleared on erasure; a rebuild after an erasure cannot open them again (their key is gone).
CREATE TABLE read_model.users
(
    user_id             uuid        PRIMARY KEY,
    role                text        NOT NULL,
    first_name          text,
    last_name           text,
    email               text,
    password_hash       text,
    preferred_language  text        NOT NULL,
    hebrew_level        text,
    interests           jsonb       NOT NULL DEFAULT '[]',
    avatar_path         text,
    avatar_content_type text,
    avatar_updated_at   timestamptz,
    erased              boolean     NOT NULL DEFAULT false,
    registered_at       timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX users_role ON read_model.users (role);
CREATE INDEX users_first_name ON read_model.users (lower(first_name));
CREATE INDEX users_last_name ON read_model.users (lower(last_name));

-- teacher_students (projection `teacher_students`): who teaches whom.
CREATE TABLE read_model.teacher_students
(
    teacher_id  uuid        NOT NULL,
    student_id  uuid        NOT NULL,
    assigned_at timestamptz NOT NULL,
    PRIMARY KEY (teacher_id, student_id)
);
CREATE INDEX teacher_students_student ON read_model.teacher_students (student_id);

-- classrooms, classroom_members (projection `classrooms`). Deleted classes are removed.
CREATE TABLE read_model.classrooms
(
    classroom_id uuid        PRIMARY KEY,
    name         text        NOT NULL,
    description  text,
    join_code    text        NOT NULL,
    created_by   uuid,
    created_at   timestamptz NOT NULL
);
CREATE UNIQUE INDEX classrooms_join_code ON read_model.classrooms (join_code);
CREATE INDEX classrooms_name ON read_model.classrooms (lower(name));

CREATE TABLE read_model.classroom_members
(
    classroom_id uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    role         text        NOT NULL,
    added_by     uuid,
    added_at     timestamptz NOT NULL,
    PRIMARY KEY (classroom_id, user_id)
);
CREATE INDEX classroom_members_user ON read_model.classroom_members (user_id);

-- tutor_sessions, tutor_messages, ai_requests (projection `tutor_sessions`).
CREATE TABLE read_model.tutor_sessions
(
    session_id     uuid        PRIMARY KEY,
    student_id     uuid        NOT NULL,
    -- default | global | explain_mistake
    kind           text        NOT NULL,
    exercise_id    uuid,
    attempt_id     uuid,
    title          text,
    awaiting_reply boolean     NOT NULL DEFAULT false,
    message_count  integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX tutor_sessions_student ON read_model.tutor_sessions (student_id, updated_at DESC);

-- One row per message part, in stream order: (event sequence, part within the event).
CREATE TABLE read_model.tutor_messages
(
    session_id        uuid        NOT NULL,
    event_sequence    bigint      NOT NULL,
    part              smallint    NOT NULL,
    request_id        uuid,
    -- student | assistant | context | tool | error
    role              text        NOT NULL,
    text              text,
    tool              text,
    created_at        timestamptz NOT NULL,
    PRIMARY KEY (session_id, event_sequence, part)
);

-- Every AI request and how it ended (for the portals' pending state and for analytics).
CREATE TABLE read_model.ai_requests
(
    request_id        uuid        PRIMARY KEY,
    session_id        uuid        NOT NULL,
    student_id        uuid        NOT NULL,
    -- reply | mistake_explanation
    kind              text        NOT NULL,
    requested_at      timestamptz NOT NULL,
    completed_at      timestamptz,
    failed_at         timestamptz,
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    latency_ms        bigint,
    failure           text
);
CREATE INDEX ai_requests_requested_at ON read_model.ai_requests (requested_at);
CREATE INDEX ai_requests_student ON read_model.ai_requests (student_id, requested_at);

-- exercises, attempts, practice_summary (projection `practice`).
CREATE TABLE read_model.exercises
(
    exercise_id    uuid        PRIMARY KEY,
    student_id     uuid        NOT NULL,
    game_type      text        NOT NULL,
    difficulty     text        NOT NULL,
    nikud          boolean     NOT NULL,
    correct_answer jsonb       NOT NULL,
    request_id     uuid,
    created_at     timestamptz NOT NULL,
    -- When the first correct attempt came in; NULL while unsolved.
    solved_at      timestamptz
);
CREATE INDEX exercises_student ON read_model.exercises (student_id, created_at DESC);

CREATE TABLE read_model.attempts
(
    attempt_id     uuid         PRIMARY KEY,
    exercise_id    uuid         NOT NULL,
    student_id     uuid         NOT NULL,
    game_type      text         NOT NULL,
    difficulty     text         NOT NULL,
    attempt_number integer      NOT NULL,
    -- NULL once the student is erased (the answer was personal free text).
    given_answer   jsonb,
    accuracy       numeric(5,2) NOT NULL,
    correct        boolean      NOT NULL,
    created_at     timestamptz  NOT NULL,
    -- A failed attempt stops being a "mistake" when a later attempt is correct.
    cleared_at     timestamptz
);
CREATE INDEX attempts_student ON read_model.attempts (student_id, created_at DESC);
CREATE INDEX attempts_exercise ON read_model.attempts (exercise_id, attempt_number);
CREATE INDEX attempts_open_mistakes ON read_model.attempts (student_id, created_at DESC)
    WHERE NOT correct AND cleared_at IS NULL;

CREATE TABLE read_model.practice_summary
(
    student_id      uuid        NOT NULL,
    game_type       text        NOT NULL,
    difficulty      text        NOT NULL,
    attempts        integer     NOT NULL,
    successes       integer     NOT NULL,
    failures        integer     NOT NULL,
    last_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (student_id, game_type, difficulty)
);

-- word_cards (projection `word_cards`).
CREATE TABLE read_model.word_cards
(
    card_id     uuid        PRIMARY KEY,
    owner_id    uuid        NOT NULL,
    hebrew      text,
    english     text,
    explanation text,
    is_learned  boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    learned_at  timestamptz
);
CREATE INDEX word_cards_owner ON read_model.word_cards (owner_id, created_at DESC);

-- achievement_progress, user_achievements (projection `achievements`).
CREATE TABLE read_model.achievement_progress
(
    user_id    uuid        NOT NULL,
    feature    text        NOT NULL,
    count      bigint      NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, feature)
);

CREATE TABLE read_model.user_achievements
(
    user_id         uuid        NOT NULL,
    achievement_key text        NOT NULL,
    feature         text        NOT NULL,
    target          integer     NOT NULL,
    unlocked_at     timestamptz NOT NULL,
    PRIMARY KEY (user_id, achievement_key)
);
CREATE INDEX user_achievements_unlocked ON read_model.user_achievements (user_id, unlocked_at);
