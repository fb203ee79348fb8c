//! The producer API a handler may call: request checks ([`validate`]) and the bounded HTTP client
//! ([`client`]). The same client serves the host's own `/ping` route.

pub mod client;
pub mod validate;

pub use client::{CallBounds, CallError, InvalidProducerUrl, Method, ProducerClient, Request, Response};
