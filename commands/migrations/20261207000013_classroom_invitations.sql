-- classroom_invitations (projection `classrooms`): students a teacher invited to a class who
-- have not answered yet. Not membership: an invitation makes nobody anyone's teacher. An
-- accepted invitation moves to classroom_members; a declined or withdrawn one, and those of
-- a deleted class, are removed.
CREATE TABLE read_model.classroom_invitations
(
    classroom_id uuid        NOT NULL,
    student_id   uuid        NOT NULL,
    invited_by   uuid,
    invited_at   timestamptz NOT NULL,
    PRIMARY KEY (classroom_id, student_id)
);
CREATE INDEX classroom_invitations_student ON read_model.classroom_invitations (student_id);
