//! The HTTP surface of every role. Today: liveness and readiness, which each role serves on
//! its own port so Kubernetes can probe it; the accessor's `/metrics`; and password hashing
//! for the auth that the manager's GraphQL API builds on.

pub mod auth;
pub mod health;
pub mod hub;
pub mod metrics;
