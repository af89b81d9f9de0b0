//! What a projection is: a named, checkpointed fold of the global log into tables of its own.
//!
//! The daemon hands a projection the events of one batch, in log order, inside the
//! transaction that will also move its checkpoint — so a read model is updated exactly once
//! per event, crash or no crash. The connection's `search_path` points at the schema being
//! written (`read_model` when live, `rebuild_<name>` during a rebuild), so projections use
//! unqualified table names and never know which one they are filling.
//!
//! Projections fold a whole batch in memory per row and write each touched row once
//! (load the rows the batch touches, apply, upsert with `UNNEST`), which is what makes a full
//! rebuild run close to the speed of a raw scan of the log.

use crate::log::{LoggedEvent, Metadata};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use std::collections::HashMap;
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::{open_with, Sealed, SubjectKey, KEY_LEN};
use uuid::Uuid;

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// This event can never be applied as it is (undecodable, contradicts the read model).
    /// The projection halts on it and reports it; it is never skipped silently.
    #[error("event {event_id}: {reason}")]
    Poison { event_id: Uuid, reason: String },
    /// The database refused or failed. The daemon decides whether that is transient (the
    /// connection, a deadlock: retry) or the batch's fault (then it isolates the event).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl ApplyError {
    pub fn poison(event: &LoggedEvent, reason: impl Into<String>) -> Self {
        ApplyError::Poison {
            event_id: event.event_id,
            reason: reason.into(),
        }
    }
}

impl LoggedEvent {
    /// The event as the domain's current type: upcast from its stored version, then
    /// deserialized. A failure is poison: this event will never decode.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, ApplyError> {
        let needs_upcast = crate::upcasters()
            .iter()
            .any(|u| u.can_upcast(&self.event_type, &self.event_version));
        let decoded = if needs_upcast {
            let stored = cqrs_es::persist::SerializedEvent::new(
                self.aggregate_id.clone(),
                self.sequence as usize,
                self.aggregate_type.clone(),
                self.event_type.clone(),
                self.event_version.clone(),
                self.payload.clone(),
                self.metadata.clone(),
            );
            let current = teachin_domain::upcasting::upcast(stored, crate::upcasters());
            serde_json::from_value(current.payload)
        } else {
            // The common case: already current, so deserialize in place without copying.
            E::deserialize(&self.payload)
        };
        decoded.map_err(|e| {
            ApplyError::poison(
                self,
                format!(
                    "{} {} version {} does not decode: {e}",
                    self.aggregate_type, self.event_type, self.event_version
                ),
            )
        })
    }

    /// The aggregate id parsed as a UUID (every Teachin aggregate id is one).
    pub fn aggregate_uuid(&self) -> Result<Uuid, ApplyError> {
        Uuid::parse_str(&self.aggregate_id).map_err(|_| {
            ApplyError::poison(
                self,
                format!("aggregate id `{}` is not a UUID", self.aggregate_id),
            )
        })
    }

    /// Who issued the command, as stored in the metadata (`user:<id>:<role>`, `system`...).
    pub fn issued_by(&self) -> &str {
        self.metadata
            .get("issued_by")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
    }
}

/// Opens sealed personal data during a batch. Keys are read from `personal_data_keys` in the
/// batch's own transaction and cached for the batch; an erased person's key is gone, so their
/// data opens to `None` — a rebuild after an erasure can never bring it back.
#[derive(Default)]
pub struct KeyRing {
    keys: HashMap<UserId, Option<SubjectKey>>,
}

impl KeyRing {
    /// Loads the keys of `subjects` in one query (call once per batch before opening).
    pub async fn prefetch(
        &mut self,
        conn: &mut PgConnection,
        subjects: impl IntoIterator<Item = UserId>,
    ) -> Result<(), sqlx::Error> {
        let wanted: Vec<Uuid> = subjects
            .into_iter()
            .filter(|s| !self.keys.contains_key(s))
            .map(|s| s.0)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let rows: Vec<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT subject_id, key FROM public.personal_data_keys WHERE subject_id = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?;
        for id in &wanted {
            self.keys.insert(UserId(*id), None);
        }
        for (id, key) in rows {
            self.keys.insert(UserId(id), key.and_then(to_key));
        }
        Ok(())
    }

    /// The plaintext, or `None` when the subject was erased (or the value is damaged).
    pub async fn open(
        &mut self,
        conn: &mut PgConnection,
        sealed: &Sealed,
    ) -> Result<Option<String>, sqlx::Error> {
        if !self.keys.contains_key(&sealed.subject) {
            self.prefetch(conn, [sealed.subject]).await?;
        }
        Ok(match self.keys.get(&sealed.subject) {
            Some(Some(key)) => open_with(key, sealed).ok(),
            _ => None,
        })
    }

    /// Forgets a subject's key (their erasure was just applied in this batch).
    pub fn forget(&mut self, subject: UserId) {
        self.keys.insert(subject, None);
    }
}

fn to_key(bytes: Vec<u8>) -> Option<SubjectKey> {
    (bytes.len() == KEY_LEN).then(|| {
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&bytes);
        SubjectKey(key)
    })
}

/// What a projection gets while it applies a batch.
pub struct ApplyContext<'c> {
    /// The batch transaction; `search_path` is set to the schema being written.
    pub conn: &'c mut PgConnection,
    pub keys: &'c mut KeyRing,
}

#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoint's key, and what `teachin projections rebuild NAME` takes.
    fn name(&self) -> &'static str;
    /// The tables it owns in the `read_model` schema; a rebuild recreates exactly these.
    fn tables(&self) -> &'static [&'static str];
    /// Whether `apply` looks at the events' metadata (`LoggedEvent::issued_by` and the
    /// like). None of the read models does, so their batches are read without it; a
    /// projection that needs it says so here and every batch it shares carries it.
    fn reads_metadata(&self) -> bool {
        false
    }
    /// Applies `batch` (in log order, possibly including events it ignores) inside the
    /// batch transaction.
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError>;
}

/// What a batch read for `projections` must carry: the metadata only when one of them reads it.
pub fn metadata_for<'p>(projections: impl IntoIterator<Item = &'p dyn Projection>) -> Metadata {
    if projections.into_iter().any(|p| p.reads_metadata()) {
        Metadata::Read
    } else {
        Metadata::Skipped
    }
}
