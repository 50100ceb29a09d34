//! The NATS JetStream backend of Cairn's messaging contract.
//!
//! - **Events** go to one file-backed JetStream stream per prefix,
//!   `<PREFIX>_EVENTS`, capturing `<prefix>.*.*.*`: each event is published
//!   on `<prefix>.<tenant>.<service>.<type>` with `Nats-Msg-Id` = the event
//!   id, so a re-sent event is dropped within the stream's duplicate window.
//! - **Consumer groups** are durable pull consumers named after the group,
//!   filtered on `<prefix>.*.<source>.*`, explicit acks, starting at the
//!   oldest kept message. `prefetch` is the consumer's `max_ack_pending`, so
//!   it bounds the unacknowledged messages of the whole group (every
//!   instance together), not of one instance.
//! - **Requests** are core NATS request/reply on `<prefix>.rpc.<service>`
//!   (three tokens after the prefix, so the event stream never captures
//!   them), served in a queue group per service; the message name and the
//!   context travel in headers (see [`headers`]).
//!
//! [`NatsBroker::connect`] fails when no server answers; after that the
//! handle reconnects for ever, and while it is disconnected publishes,
//! requests and consumer re-opens fail at once with
//! [`BrokerError::Unavailable`](cairn_messaging::BrokerError::Unavailable).

mod broker;
mod consume;
mod options;
mod rpc;

pub use broker::NatsBroker;
pub use options::{NatsOptions, events_filter, rpc_subject, source_filter, stream_name};
pub use rpc::headers;
