//! The HTTP surface of every role. Today: liveness and readiness, which each role serves on
//! its own port so Kubernetes can probe it, and password hashing for the auth that the
//! manager's GraphQL API builds on.

pub mod auth;
pub mod health;
