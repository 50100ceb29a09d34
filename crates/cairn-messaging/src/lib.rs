//! Messaging between services.
//!
//! - [`IntegrationEvent`]: what leaves a service, as CloudEvents 1.0 JSON.
//! - [`Broker`] / [`RequestTransport`]: the contract a broker backend
//!   implements (NATS JetStream, RabbitMQ, or the in-process
//!   [`MemoryBroker`]).
//! - [`start_relay`]: the event log as outbox, publishing a service's public events.
//! - [`Consumer`]: durable, competing, ordered per stream, exactly-once
//!   effect through an inbox, retries and dead letters ([`DeadLetters`]).
//! - [`rpc`]: commands and queries across processes.

mod broker;
mod consumer;
mod dlq;
mod error;
mod event;
mod log_broker;
mod memory;
mod relay;
pub mod rpc;
mod schema;

pub use broker::{
    Acker, Acks, Broker, BrokerError, ConsumerSpec, Deliveries, Delivery, RequestHandler,
    RequestTransport, RpcError, RpcRequest, Serving,
};
pub use consumer::{
    Consumer, ConsumerHandle, ConsumerOptions, ConsumerStatus, EventHandler, HandlerError,
};
pub use dlq::{DeadLetter, DeadLetterFilter, DeadLetters};
pub use error::MessagingError;
pub use event::{
    CONTENT_TYPE, IntegrationEvent, SPEC_VERSION, topic, validate_public_type, validate_service,
};
pub use log_broker::LogBroker;
pub use memory::MemoryBroker;
pub use relay::{PublicEvents, Relay, RelayOptions, RelayStatus, start_relay};
pub use schema::placeholder_rows;
