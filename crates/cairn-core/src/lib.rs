//! The vocabulary every other Cairn crate speaks.
//!
//! Identifiers ([`TenantId`], [`StreamId`], [`EventId`]) are validated when they
//! are built, so a value of one of these types is always well formed. The
//! envelope types ([`NewEvent`], [`RecordedEvent`], [`Metadata`]) describe what
//! goes into and comes out of an event store. [`DomainEvent`] turns typed event
//! enums into stored payloads and back, passing through the [`Upcasters`] of a
//! service so old schema versions are read as the current one.
//!
//! Architecture invariant: this crate does no I/O and has no async code.

mod context;
mod envelope;
mod error;
mod event;
mod ids;
mod upcast;

pub use context::RequestContext;
pub use envelope::{
    MAX_ACTOR_BYTES, MAX_CORRELATION_ID_BYTES, MAX_EVENT_TYPE_BYTES, Metadata, NewEvent,
    RecordedEvent, validate_event_type,
};
pub use error::{ErrorCode, ValidationError};
pub use event::{DecodeError, DomainEvent, check_payload, decode_event, encode_event, event_types};
pub use ids::{Category, EventId, MAX_STREAM_ID_BYTES, MAX_TENANT_ID_BYTES, StreamId, TenantId};
pub use upcast::{UpcastError, Upcasters};
