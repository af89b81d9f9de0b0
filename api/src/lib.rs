//! Teachin's HTTP surface: the GraphQL API the portals use, authentication (`auth`) and
//! authorization (`access`), the errors clients see (`error`), and the health and metrics
//! endpoints every role serves. `server` puts the manager's routes together.

pub mod access;
pub mod auth;
pub mod error;
pub mod graphql;
pub mod health;
pub mod hub;
pub mod media;
pub mod metrics;
pub mod parsed_documents;
pub mod quota;
pub mod server;
pub mod subscriptions;
