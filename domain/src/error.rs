//! The small vocabulary every domain error maps onto, so the API can turn any rejection into
//! a machine-readable code (`NOT_FOUND`, `FORBIDDEN`, ...) without knowing each aggregate.

/// What kind of rejection an error is. The API maps each to a GraphQL `extensions.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or breaks a rule about its own content (`BAD_USER_INPUT`).
    InvalidInput,
    /// The thing the command names does not exist (`NOT_FOUND`).
    NotFound,
    /// The actor may not do this (`FORBIDDEN`).
    Forbidden,
    /// The command contradicts the current state (`CONFLICT`): duplicate, already deleted...
    Conflict,
    /// A port failed (database, key store). Not the caller's fault (`INTERNAL`).
    Unavailable,
}

/// Implemented by every aggregate's error type.
pub trait DomainError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// For `InvalidInput`, the offending field (GraphQL `extensions.field`).
    fn field(&self) -> Option<&'static str> {
        None
    }
}
