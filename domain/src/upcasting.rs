//! Schema evolution of the event log.
//!
//! Events are facts that happened; once stored they are never rewritten, not even to follow a
//! change in their Rust type. Instead:
//!
//! * any change to an event's shape (a renamed, removed or retyped field) bumps that event's
//!   `event_version()`, which is stored next to every event;
//! * for each older version still in the log, an upcaster here turns the stored JSON into
//!   the current shape as the event is *read*, before serde sees it. The event store applies
//!   [`upcasters`] on every load, so aggregates, projections and replays only ever deal with
//!   the current types;
//! * adding an optional field that deserializes with a default needs no new version.
//!
//! Upcasters chain: each moves an event one version forward, and an event already at (or
//! past) an upcaster's version is left untouched.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster, SerializedEvent};
use serde_json::Value;

/// Every upcaster the event store must apply when it loads events.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(progress_recorded_v2())]
}

/// Brings a stored event to its current version: applies the first of `upcasters` that claims
/// it, again and again, until none does. Used by everything that reads the log — the event
/// store, projections, replays.
pub fn upcast(mut event: SerializedEvent, upcasters: &[Box<dyn EventUpcaster>]) -> SerializedEvent {
    while let Some(upcaster) = upcasters
        .iter()
        .find(|u| u.can_upcast(&event.event_type, &event.event_version))
    {
        event = upcaster.upcast(event);
    }
    event
}

/// `ProgressRecorded` 1.0 → 2.0: `increment` became `increment_by` and `total` became
/// `new_count`, so the names say what the numbers are.
fn progress_recorded_v2() -> SemanticVersionEventUpcaster {
    SemanticVersionEventUpcaster::new(
        "ProgressRecorded",
        "2.0",
        Box::new(|payload| {
            rename_fields(
                payload,
                "ProgressRecorded",
                &[("increment", "increment_by"), ("total", "new_count")],
            )
        }),
    )
}

/// Renames fields of an externally tagged event payload (`{"<Variant>": {fields}}`). A
/// payload of another shape is returned as it came, so that deserializing it reports the
/// problem instead of the upcaster hiding it.
fn rename_fields(mut payload: Value, variant: &str, renames: &[(&str, &str)]) -> Value {
    if let Some(Value::Object(fields)) = payload.get_mut(variant) {
        for (old, new) in renames {
            if let Some(value) = fields.remove(*old) {
                fields.insert((*new).to_string(), value);
            }
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::achievements::{AchievementEvent, AchievementProgress, Feature};
    use cqrs_es::persist::SerializedEvent;
    use cqrs_es::{Aggregate, DomainEvent};
    use serde_json::json;

    fn stored(sequence: usize, event_type: &str, version: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new(
            "5f0c1d2e-0000-4000-8000-000000000001".to_string(),
            sequence,
            AchievementProgress::TYPE.to_string(),
            event_type.to_string(),
            version.to_string(),
            payload,
            json!({}),
        )
    }

    /// What the event store does on load: every applicable upcaster, in order.
    fn upcast(event: SerializedEvent) -> SerializedEvent {
        upcasters().iter().fold(event, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        })
    }

    #[test]
    fn a_version_one_progress_event_loads_in_the_current_shape() {
        let old = [
            stored(
                1,
                "ProgressRecorded",
                "1.0",
                json!({"ProgressRecorded": {"feature": "WordCards", "increment": 2, "total": 2}}),
            ),
            stored(
                2,
                "AchievementUnlocked",
                "1.0",
                json!({"AchievementUnlocked": {"key": "word_cards_1", "feature": "WordCards", "target": 1}}),
            ),
            stored(
                3,
                "ProgressRecorded",
                "1.0",
                json!({"ProgressRecorded": {"feature": "WordCards", "increment": 3, "total": 5}}),
            ),
        ];

        let mut progress = AchievementProgress::default();
        let mut events = Vec::new();
        for event in old {
            let event = upcast(event);
            if event.event_type == "ProgressRecorded" {
                assert_eq!(event.event_version, "2.0.0");
            }
            let event: AchievementEvent = serde_json::from_value(event.payload).unwrap();
            progress.apply(event.clone());
            events.push(event);
        }

        assert_eq!(
            events[2],
            AchievementEvent::ProgressRecorded {
                feature: Feature::WordCards,
                increment_by: 3,
                new_count: 5,
            }
        );
        assert_eq!(events[2].event_version(), "2.0");
        assert_eq!(progress.count(Feature::WordCards), 5);
        assert_eq!(progress.unlocked(), ["word_cards_1"]);
    }

    #[test]
    fn a_current_event_is_left_untouched() {
        let current = AchievementEvent::ProgressRecorded {
            feature: Feature::WordOrder,
            increment_by: 1,
            new_count: 4,
        };
        let event = stored(
            1,
            &current.event_type(),
            &current.event_version(),
            serde_json::to_value(&current).unwrap(),
        );
        assert!(upcasters()
            .iter()
            .all(|u| !u.can_upcast(&event.event_type, &event.event_version)));
        let loaded = upcast(event.clone());
        assert_eq!(loaded, event);
        assert_eq!(
            serde_json::from_value::<AchievementEvent>(loaded.payload).unwrap(),
            current
        );
    }

    #[test]
    fn other_events_are_left_untouched() {
        let unlocked = stored(
            1,
            "AchievementUnlocked",
            "1.0",
            json!({"AchievementUnlocked": {"key": "word_order_1", "feature": "WordOrder", "target": 1}}),
        );
        assert_eq!(upcast(unlocked.clone()), unlocked);
    }

    #[test]
    fn a_payload_of_an_unexpected_shape_is_passed_on_for_serde_to_reject() {
        let odd = json!({"SomethingElse": {"increment": 1}});
        assert_eq!(
            rename_fields(
                odd.clone(),
                "ProgressRecorded",
                &[("increment", "increment_by")]
            ),
            odd
        );
    }
}
