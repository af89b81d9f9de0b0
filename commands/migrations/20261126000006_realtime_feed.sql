-- The realtime feed's own state (projections/src/feed): which student owns each tutor
-- session, so a reply can be pushed to them without waiting for another projection. Written
-- in the transaction that moves the feed's checkpoint.
CREATE TABLE feed_session_owners
(
    session_id uuid PRIMARY KEY,
    student_id uuid NOT NULL
);
