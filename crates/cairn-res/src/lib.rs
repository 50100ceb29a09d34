//! The RES protocol, version 1.2, as Cairn speaks it: what a live client
//! (such as `resclient`) and Cairn's WebSocket endpoint say to each other.
//!
//! This crate is the protocol's vocabulary and its rules, with no I/O:
//! - [`Rid`]: a resource id, `service.part.part[?query]`;
//! - [`Request`]: a client frame read and checked (`version`, `subscribe`,
//!   `unsubscribe`, `get`, `call`, `auth`), or the error to answer it with;
//! - [`Response`] and [`Event`]: the frames the endpoint sends, results,
//!   errors and events (`change`, `add`, `remove`, `unsubscribe`,
//!   `reaccess`, `delete`, custom) on a resource;
//! - [`Value`], [`Resource`] and [`ResourceSet`]: models, collections,
//!   references and data values;
//! - [`ResError`]: the `system.*` errors, and the one mapping from
//!   [`cairn_core::ErrorCode`] (as problem+json has over HTTP);
//! - [`Subscriptions`]: what one connection holds, directly (counted) and
//!   through references, within a limit;
//! - [`diff`]: the events that take a client from one state of a
//!   resource to the next;
//! - [`service`]: the RES-Service protocol between a gateway and the
//!   services over NATS (subjects, payloads, responses, events, patterns).
//!
//! Written from the RES specification (`res-protocol.md`,
//! `res-client-protocol.md`, `res-service-protocol.md`); the endpoint that serves it and the
//! resources the services declare build on it.

pub mod diff;
mod error;
mod frame;
mod rid;
pub mod service;
mod subscriptions;
mod value;

pub use error::ResError;
pub use frame::{Event, Request, RequestKind, Response, check_version};
pub use rid::{MAX_RID_BYTES, Rid, is_pattern, name_matches};
pub use subscriptions::{DEFAULT_LIMIT, Subscriptions};
pub use value::{Resource, ResourceSet, Value};

/// The protocol version this crate speaks, answered to `version`.
pub const PROTOCOL: &str = "1.2.3";
