//! Test support for this crate's tests and the binary's end-to-end tests (feature
//! `testing`): a local endpoint with Service Bus's REST semantics, so the Service Bus backend
//! runs against HTTP as it does in production.

pub mod servicebus;

pub use servicebus::{LocalServiceBus, LocalServiceBusSettings, RedirectingHttpClient};
