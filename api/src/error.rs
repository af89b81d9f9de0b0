//! The API's one error type, and the one place where every failure — a domain rejection, a
//! database error, a refused token — becomes the machine-readable `extensions.code` the
//! portals switch on. Internal details are logged (the request's span carries its id) and
//! never sent: the client gets the code and a sentence it can show.

use async_graphql::ErrorExtensions;
use std::fmt;
use std::time::Duration;
use teachin_commands::CommandError;
use teachin_domain::error::{DomainError, ErrorKind};

/// The codes a client can receive, as `extensions.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    BadUserInput,
    NotFound,
    Conflict,
    RateLimited,
    /// A daily quota (model requests or tokens, emails) is spent; `retryAfter` says when it
    /// resets.
    QuotaExceeded,
    /// The document costs more than a request may (page sizes multiply their fields).
    QueryTooComplex,
    /// The document has more fields that call the AI model than a request may.
    TooManyModelCalls,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::BadUserInput => "BAD_USER_INPUT",
            Code::NotFound => "NOT_FOUND",
            Code::Conflict => "CONFLICT",
            Code::RateLimited => "RATE_LIMITED",
            Code::QuotaExceeded => "QUOTA_EXCEEDED",
            Code::QueryTooComplex => "QUERY_TOO_COMPLEX",
            Code::TooManyModelCalls => "TOO_MANY_MODEL_CALLS",
            Code::Internal => "INTERNAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// For `BAD_USER_INPUT`: the argument or input field at fault.
    pub field: Option<String>,
    /// For `RATE_LIMITED`: seconds until the client may try again.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn unauthenticated() -> Self {
        Self::new(Code::Unauthenticated, "sign in to do this")
    }

    pub fn forbidden() -> Self {
        Self::new(Code::Forbidden, "you are not allowed to do this")
    }

    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(Code::BadUserInput, message)
        }
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        Self::new(Code::NotFound, format!("{what} was not found"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        let secs = retry_after.as_secs().max(1);
        Self {
            retry_after: Some(secs),
            ..Self::new(
                Code::RateLimited,
                format!("too many attempts; try again in {secs} s"),
            )
        }
    }

    /// A refusal with its own code and sentence (limits on what a request may ask).
    pub fn refused(code: Code, message: impl Into<String>) -> Self {
        Self::new(code, message)
    }

    /// A daily quota is spent: `message` says which; it comes back in `resets_in`.
    pub fn quota_exceeded(message: impl Into<String>, resets_in: Duration) -> Self {
        Self {
            retry_after: Some(resets_in.as_secs().max(1)),
            ..Self::new(Code::QuotaExceeded, message)
        }
    }

    /// A failure that is not the caller's fault. The detail goes to the log only.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            Code::Internal,
            "something went wrong on our side; try again",
        )
    }
}

// Deliberately not `Display`: async-graphql converts any `Display` error into a bare
// message, which would drop the code. `From` below keeps it.

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.message.clone()).extend_with(|_, e| {
            e.set("code", self.code.as_str());
            if let Some(field) = &self.field {
                e.set("field", field.as_str());
            }
            if let Some(secs) = self.retry_after {
                e.set("retryAfter", secs);
            }
        })
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        e.extend()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

impl From<fred::error::Error> for ApiError {
    fn from(e: fred::error::Error) -> Self {
        ApiError::internal(format!("redis: {e}"))
    }
}

impl<E: DomainError> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        match &e {
            CommandError::Rejected(inner) => match inner.kind() {
                ErrorKind::InvalidInput => Self {
                    field: inner.field().map(str::to_owned),
                    ..Self::new(Code::BadUserInput, inner.to_string())
                },
                ErrorKind::NotFound => Self::new(Code::NotFound, inner.to_string()),
                ErrorKind::Forbidden => Self::new(Code::Forbidden, inner.to_string()),
                ErrorKind::Conflict => Self::new(Code::Conflict, inner.to_string()),
                ErrorKind::Unavailable => ApiError::internal(inner),
            },
            CommandError::Conflict { .. } | CommandError::IdempotencyKeyReused => {
                Self::new(Code::Conflict, e.to_string())
            }
            CommandError::Store(detail) => ApiError::internal(detail),
        }
    }
}
