-- State the domain's ports need beyond the log itself.

-- Per-person data keys for crypto-shredding. Erasure sets `key` to NULL (and keeps the row
-- as a tombstone so nothing new is ever sealed for that person again).
CREATE TABLE personal_data_keys
(
    subject_id  uuid        PRIMARY KEY,
    key         bytea       CHECK (key IS NULL OR length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    shredded_at timestamptz
);

-- Values unique across aggregates (emails, class names, join codes), stored as keyed
-- hashes so the table itself holds no personal data.
CREATE TABLE unique_claims
(
    scope      text        NOT NULL,
    value_hash bytea       NOT NULL,
    owner      text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, value_hash)
);

-- Erasure releases everything a user holds, by owner.
CREATE INDEX unique_claims_owner ON unique_claims (scope, owner);
