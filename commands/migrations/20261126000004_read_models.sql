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
