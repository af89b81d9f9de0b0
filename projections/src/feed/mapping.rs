//! From a log event to the notifications it causes — pure, given what the publisher looked up
//! beforehand (the session owners, the opened personal data). The table is in the module
//! documentation of [`crate::feed`].

use super::{Notification, Target, ADMINS_GROUP};
use crate::log::LoggedEvent;
use serde_json::{json, Value};
use teachin_domain::achievements::{achievement, AchievementEvent, AchievementProgress};
use teachin_domain::classroom::{Classroom, ClassroomEvent};
use teachin_domain::generation::{GenerationEvent, GenerationRequest};
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::Sealed;
use teachin_domain::practice::{Exercise, ExerciseEvent};
use teachin_domain::teaching::{TeacherStudents, TeacherStudentsEvent};
use teachin_domain::tutor_session::{TutorSession, TutorSessionEvent};
use teachin_domain::user::{User, UserEvent};
use teachin_domain::vocabulary::GameType;

use cqrs_es::Aggregate;

/// What the mapping needs to know beyond the event itself.
pub trait FeedLookup {
    /// The person a tutor session or a generation request belongs to (by aggregate id).
    fn session_owner(&self, session_id: &str) -> Option<UserId>;
    /// The plaintext of a sealed value, `None` when its subject was erased. Only values named
    /// by [`sealed_to_open`] are asked for.
    fn open(&self, sealed: &Sealed) -> Option<String>;
}

/// Decodes `event` as `A`'s event if it belongs to `A`'s streams; logs (and yields nothing)
/// when it does not decode.
fn decoded<A: Aggregate>(event: &LoggedEvent) -> Option<A::Event> {
    if event.aggregate_type != A::TYPE {
        return None;
    }
    match event.decode::<A::Event>() {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            tracing::error!(
                event_id = %event.event_id,
                position = %event.position,
                %error,
                "realtime feed: event does not decode; no notification for it"
            );
            None
        }
    }
}

/// The stream id as a user id (the streams keyed by a person: User, AchievementProgress).
fn stream_user(event: &LoggedEvent) -> Option<UserId> {
    event.aggregate_id.parse().ok()
}

/// The sealed values [`notifications_for`] will ask [`FeedLookup::open`] for.
pub fn sealed_to_open(event: &LoggedEvent) -> Vec<Sealed> {
    if let Some(TutorSessionEvent::AiReplyCompleted { text, .. }) = decoded::<TutorSession>(event) {
        return vec![text];
    }
    match decoded::<GenerationRequest>(event) {
        Some(GenerationEvent::WordExplained {
            definition,
            explanation,
            ..
        }) => return vec![definition, explanation],
        Some(GenerationEvent::EmailDrafted { subject, body, .. }) => return vec![subject, body],
        _ => {}
    }
    if let Some(UserEvent::UserRegistered {
        first_name,
        last_name,
        ..
    }) = decoded::<User>(event)
    {
        return vec![first_name, last_name];
    }
    Vec::new()
}

/// `(stream id, person)` when `event` starts a tutor session or a generation request: what
/// the feed remembers in `feed_session_owners`, to address the results that follow.
pub fn session_started(event: &LoggedEvent) -> Option<(String, UserId)> {
    if let Some(TutorSessionEvent::TutorSessionStarted { student, .. }) =
        decoded::<TutorSession>(event)
    {
        return Some((event.aggregate_id.clone(), student));
    }
    match decoded::<GenerationRequest>(event)? {
        GenerationEvent::SentencesRequested { requester, .. }
        | GenerationEvent::WordExplanationRequested { requester, .. }
        | GenerationEvent::EmailDraftRequested { requester, .. } => {
            Some((event.aggregate_id.clone(), requester))
        }
        _ => None,
    }
}

/// The notifications `event` causes, in order (usually none or one).
pub fn notifications_for(event: &LoggedEvent, lookup: &dyn FeedLookup) -> Vec<Notification> {
    let pushes: Vec<(Target, &'static str, Value)> = match event.aggregate_type.as_str() {
        t if t == AchievementProgress::TYPE => achievement_pushes(event),
        t if t == TutorSession::TYPE => tutor_pushes(event, lookup),
        t if t == Exercise::TYPE => exercise_pushes(event),
        t if t == TeacherStudents::TYPE => teaching_pushes(event),
        t if t == Classroom::TYPE => classroom_pushes(event),
        t if t == User::TYPE => user_pushes(event, lookup),
        t if t == GenerationRequest::TYPE => generation_pushes(event, lookup),
        _ => Vec::new(),
    };
    pushes
        .into_iter()
        .enumerate()
        .map(|(part, (target, method, payload))| Notification {
            id: event.event_id,
            part: part as u32,
            target,
            method: method.to_string(),
            payload,
            position: event.position,
        })
        .collect()
}

const RECEIVE_EVENT: &str = "ReceiveEvent";
const NOTIFICATION_MESSAGE: &str = "NotificationMessage";

fn receive_event(event_type: &str, payload: Value) -> Value {
    json!({ "eventType": event_type, "payload": payload })
}

/// `NotificationMessage {message, type, timestamp}`, plus `extra`'s fields.
fn message(event: &LoggedEvent, text: String, extra: Value) -> Value {
    let mut body = json!({
        "message": text,
        "type": "Info",
        "timestamp": event.recorded_at.to_rfc3339(),
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

fn opened(lookup: &dyn FeedLookup, sealed: &Sealed) -> String {
    lookup
        .open(sealed)
        .unwrap_or_else(|| Sealed::ERASED.to_string())
}

fn achievement_pushes(event: &LoggedEvent) -> Vec<(Target, &'static str, Value)> {
    let Some(AchievementEvent::AchievementUnlocked {
        key,
        feature,
        target,
    }) = decoded::<AchievementProgress>(event)
    else {
        return Vec::new();
    };
    let Some(student) = stream_user(event) else {
        return Vec::new();
    };
    let badge = achievement(&key);
    let payload = json!({
        "key": key,
        "name": badge.map(|b| b.name).unwrap_or(key.as_str()),
        "description": badge.map(|b| b.description).unwrap_or_default(),
        "feature": feature.as_str(),
        "target": target,
    });
    vec![(
        Target::User(student),
        RECEIVE_EVENT,
        receive_event("AchievementUnlocked", payload),
    )]
}

fn tutor_pushes(
    event: &LoggedEvent,
    lookup: &dyn FeedLookup,
) -> Vec<(Target, &'static str, Value)> {
    let Some(decoded) = decoded::<TutorSession>(event) else {
        return Vec::new();
    };
    let payload = match decoded {
        TutorSessionEvent::AiReplyCompleted {
            request_id,
            text,
            model,
            ..
        } => json!({
            "requestId": request_id,
            "threadId": event.aggregate_id,
            "text": opened(lookup, &text),
            "model": model,
            "stage": "Last",
        }),
        TutorSessionEvent::AiReplyFailed {
            request_id,
            reason,
            model,
            ..
        } => json!({
            "requestId": request_id,
            "threadId": event.aggregate_id,
            "model": model,
            "stage": "Error",
            "error": reason,
        }),
        _ => return Vec::new(),
    };
    let Some(student) = lookup.session_owner(&event.aggregate_id) else {
        tracing::warn!(
            session = %event.aggregate_id,
            event_id = %event.event_id,
            "realtime feed: reply in a session whose start was never seen; not pushed"
        );
        return Vec::new();
    };
    vec![(
        Target::User(student),
        RECEIVE_EVENT,
        receive_event("ChatAiAnswer", payload),
    )]
}

/// Word explanations and email drafts reach their requester as the original's `ReceiveEvent`s;
/// a failed request as an error message (sentences arrive through `ExerciseGenerated`).
fn generation_pushes(
    event: &LoggedEvent,
    lookup: &dyn FeedLookup,
) -> Vec<(Target, &'static str, Value)> {
    let Some(decoded) = decoded::<GenerationRequest>(event) else {
        return Vec::new();
    };
    let request_id = &event.aggregate_id;
    let (method, payload) = match decoded {
        GenerationEvent::WordExplained {
            definition,
            explanation,
            ..
        } => (
            RECEIVE_EVENT,
            receive_event(
                "WordExplain",
                json!({
                    "id": request_id,
                    "definition": opened(lookup, &definition),
                    "explanation": opened(lookup, &explanation),
                }),
            ),
        ),
        GenerationEvent::EmailDrafted { subject, body, .. } => (
            RECEIVE_EVENT,
            receive_event(
                "EmailDraftGenerated",
                json!({
                    "requestId": request_id,
                    "subject": opened(lookup, &subject),
                    "body": opened(lookup, &body),
                }),
            ),
        ),
        GenerationEvent::GenerationFailed { reason, .. } => (
            NOTIFICATION_MESSAGE,
            message(
                event,
                "The AI could not prepare what you asked for; please try again.".into(),
                json!({ "type": "Error", "requestId": request_id, "reason": reason }),
            ),
        ),
        _ => return Vec::new(),
    };
    let Some(requester) = lookup.session_owner(request_id) else {
        tracing::warn!(request = %request_id, "realtime feed: result of a request never seen; not pushed");
        return Vec::new();
    };
    vec![(Target::User(requester), method, payload)]
}

fn exercise_pushes(event: &LoggedEvent) -> Vec<(Target, &'static str, Value)> {
    let Some(ExerciseEvent::ExerciseGenerated {
        student,
        game_type,
        difficulty,
        nikud,
        correct_answer,
        request_id,
    }) = decoded::<Exercise>(event)
    else {
        return Vec::new();
    };
    let event_type = match game_type {
        GameType::WordOrder => "SplitSentenceGeneration",
        GameType::TypingPractice | GameType::SpeakingPractice => "SentenceGeneration",
    };
    let text = correct_answer.join(" ");
    let words = match game_type {
        GameType::WordOrder => correct_answer,
        _ => text.split_whitespace().map(str::to_string).collect(),
    };
    let payload = json!({
        "requestId": request_id,
        "exercises": [{
            "exerciseId": event.aggregate_id,
            "gameType": game_type.as_str(),
            "text": text,
            "words": words,
            "difficulty": difficulty,
            "nikud": nikud,
        }],
    });
    vec![(
        Target::User(student),
        RECEIVE_EVENT,
        receive_event(event_type, payload),
    )]
}

fn teaching_pushes(event: &LoggedEvent) -> Vec<(Target, &'static str, Value)> {
    let teacher = json!({ "teacherId": event.aggregate_id });
    let (student, text) = match decoded::<TeacherStudents>(event) {
        Some(TeacherStudentsEvent::StudentAssigned { student }) => {
            (student, "A teacher added you to their students.")
        }
        Some(TeacherStudentsEvent::StudentUnassigned { student }) => {
            (student, "A teacher removed you from their students.")
        }
        None => return Vec::new(),
    };
    vec![(
        Target::User(student),
        NOTIFICATION_MESSAGE,
        message(event, text.to_string(), teacher),
    )]
}

fn classroom_pushes(event: &LoggedEvent) -> Vec<(Target, &'static str, Value)> {
    let class = json!({ "classroomId": event.aggregate_id });
    let (user, text) = match decoded::<Classroom>(event) {
        Some(ClassroomEvent::MemberAdded { user, .. }) => (user, "You were added to a class."),
        Some(ClassroomEvent::MemberRemoved { user }) => (user, "You were removed from a class."),
        // The invitation waits for the student's answer (`acceptClassInvitation`), so the
        // student has to hear of it.
        Some(ClassroomEvent::MemberInvited { student, .. }) => {
            (student, "A teacher invited you to a class.")
        }
        _ => return Vec::new(),
    };
    vec![(
        Target::User(user),
        NOTIFICATION_MESSAGE,
        message(event, text.to_string(), class),
    )]
}

fn user_pushes(event: &LoggedEvent, lookup: &dyn FeedLookup) -> Vec<(Target, &'static str, Value)> {
    let Some(user) = stream_user(event) else {
        return Vec::new();
    };
    match decoded::<User>(event) {
        Some(UserEvent::UserRegistered {
            role,
            first_name,
            last_name,
            ..
        }) => {
            let name = format!(
                "{} {}",
                opened(lookup, &first_name),
                opened(lookup, &last_name)
            );
            vec![(
                Target::Group(ADMINS_GROUP.to_string()),
                NOTIFICATION_MESSAGE,
                message(
                    event,
                    format!(
                        "New {} registered: {}.",
                        role.as_str().to_lowercase(),
                        name.trim()
                    ),
                    json!({ "userId": user, "role": role.as_str() }),
                ),
            )]
        }
        Some(UserEvent::RoleChanged { to, .. }) => vec![(
            Target::User(user),
            NOTIFICATION_MESSAGE,
            message(event, format!("Your role is now {to}."), json!({})),
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogPosition;
    use std::collections::HashMap;
    use teachin_domain::ids::RequestId;
    use teachin_domain::vocabulary::Difficulty;
    use uuid::Uuid;

    #[derive(Default)]
    struct Lookup {
        owners: HashMap<String, UserId>,
        texts: HashMap<String, String>,
    }

    impl FeedLookup for Lookup {
        fn session_owner(&self, session_id: &str) -> Option<UserId> {
            self.owners.get(session_id).copied()
        }
        fn open(&self, sealed: &Sealed) -> Option<String> {
            self.texts.get(&sealed.ciphertext).cloned()
        }
    }

    fn logged(aggregate_type: &str, aggregate_id: String, payload: Value) -> LoggedEvent {
        let event_type = payload
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        LoggedEvent {
            position: LogPosition {
                transaction_id: 10,
                global_position: 3,
            },
            event_id: Uuid::new_v4(),
            aggregate_type: aggregate_type.into(),
            aggregate_id,
            sequence: 1,
            event_type,
            event_version: "1.0".into(),
            payload,
            metadata: json!({"issued_by": "system"}),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn generation_results_go_to_their_requester_remembered_from_the_request() {
        use teachin_domain::generation::AiUsage;
        let requester = UserId::new();
        let request = Uuid::new_v4().to_string();
        let seal = |c: &str| Sealed {
            subject: requester,
            ciphertext: c.into(),
        };
        let requested = logged(
            "GenerationRequest",
            request.clone(),
            serde_json::to_value(GenerationEvent::WordExplanationRequested {
                requester,
                word: seal("w"),
                context: seal("c"),
            })
            .unwrap(),
        );
        assert_eq!(
            session_started(&requested),
            Some((request.clone(), requester))
        );
        let usage = AiUsage {
            model: "m".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            latency_ms: 3,
        };
        let explained = logged(
            "GenerationRequest",
            request.clone(),
            serde_json::to_value(GenerationEvent::WordExplained {
                definition: seal("d"),
                explanation: seal("e"),
                usage,
            })
            .unwrap(),
        );
        assert_eq!(sealed_to_open(&explained), vec![seal("d"), seal("e")]);
        let mut lookup = Lookup::default();
        assert!(
            notifications_for(&explained, &lookup).is_empty(),
            "no requester known"
        );
        lookup.owners.insert(request.clone(), requester);
        lookup.texts.insert("d".into(), "book".into());
        lookup.texts.insert("e".into(), "a thing you read".into());
        let pushes = notifications_for(&explained, &lookup);
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].target, Target::User(requester));
        assert_eq!(
            pushes[0].payload,
            json!({"eventType": "WordExplain", "payload": {
                "id": request, "definition": "book", "explanation": "a thing you read"
            }})
        );
        let failed = logged(
            "GenerationRequest",
            request.clone(),
            serde_json::to_value(GenerationEvent::GenerationFailed {
                reason: "model refused".into(),
                model: None,
                latency_ms: 5,
            })
            .unwrap(),
        );
        let pushes = notifications_for(&failed, &lookup);
        assert_eq!(pushes[0].method, "NotificationMessage");
        assert_eq!(pushes[0].payload["type"], "Error");
        assert_eq!(pushes[0].payload["requestId"], request.as_str());
    }

    #[test]
    fn a_completed_reply_goes_to_the_sessions_student_with_its_text_opened() {
        let student = UserId::new();
        let session = Uuid::new_v4().to_string();
        let request = RequestId::new();
        let sealed = Sealed {
            subject: student,
            ciphertext: "c1".into(),
        };
        let event = logged(
            "TutorSession",
            session.clone(),
            serde_json::to_value(TutorSessionEvent::AiReplyCompleted {
                request_id: request,
                text: sealed.clone(),
                model: "m".into(),
                prompt_tokens: 1,
                completion_tokens: 2,
                latency_ms: 3,
            })
            .unwrap(),
        );
        assert_eq!(sealed_to_open(&event), vec![sealed]);
        let mut lookup = Lookup::default();
        assert!(
            notifications_for(&event, &lookup).is_empty(),
            "no owner known"
        );
        lookup.owners.insert(session.clone(), student);
        lookup.texts.insert("c1".into(), "Shalom!".into());
        let pushes = notifications_for(&event, &lookup);
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].id, event.event_id);
        assert_eq!(pushes[0].target, Target::User(student));
        assert_eq!(pushes[0].method, "ReceiveEvent");
        assert_eq!(
            pushes[0].payload,
            json!({"eventType": "ChatAiAnswer", "payload": {
                "requestId": request, "threadId": session, "text": "Shalom!", "model": "m", "stage": "Last"
            }})
        );
        lookup.texts.clear();
        assert_eq!(
            notifications_for(&event, &lookup)[0].payload["payload"]["text"],
            "[erased]"
        );
    }

    #[test]
    fn generated_exercises_name_their_game() {
        let student = UserId::new();
        let event = logged(
            "Exercise",
            Uuid::new_v4().to_string(),
            serde_json::to_value(ExerciseEvent::ExerciseGenerated {
                student,
                game_type: GameType::WordOrder,
                difficulty: Difficulty::Easy,
                nikud: false,
                correct_answer: vec!["אני".into(), "אוהב".into()],
                request_id: RequestId::new(),
            })
            .unwrap(),
        );
        let pushes = notifications_for(&event, &Lookup::default());
        assert_eq!(pushes[0].target, Target::User(student));
        assert_eq!(pushes[0].payload["eventType"], "SplitSentenceGeneration");
        let exercise = &pushes[0].payload["payload"]["exercises"][0];
        assert_eq!(exercise["words"], json!(["אני", "אוהב"]));
        assert_eq!(exercise["text"], "אני אוהב");
        assert_eq!(exercise["difficulty"], "Easy");
    }

    #[test]
    fn unknown_and_undecodable_events_cause_nothing() {
        let odd = logged("Elsewhere", "x".into(), json!({"Happened": {}}));
        assert!(notifications_for(&odd, &Lookup::default()).is_empty());
        let broken = logged(
            "TutorSession",
            "x".into(),
            json!({"AiReplyCompleted": {"nope": 1}}),
        );
        assert!(notifications_for(&broken, &Lookup::default()).is_empty());
        assert!(sealed_to_open(&broken).is_empty());
    }
}
