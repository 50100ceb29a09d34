//! The one shape of a Cairn service.
//!
//! A service crate exports one [`ServiceDescriptor`]: its name, HTTP
//! routes and OpenAPI, the commands and queries it handles (each declaring
//! its [`Access`] next to its type), its projections, its public events,
//! the consumers it runs, what it asks of other services over
//! request/reply ([`Import`]) and what it answers ([`Export`]), and the
//! background work it starts (sagas). The runtime (`cairn up`, `cairn run
//! <service>`) loops over descriptors: nothing in it is written for one
//! service in particular.
//!
//! A service runs in one of two [`Topology`]s: every service in one process
//! on one store, where the log is the broker (`cairn up`), or a service on
//! its own store, talking to the others through a broker (`cairn run`).
//!
//! Every long-running part (relay, consumer, projections, saga timeouts)
//! is a [`Background`] component (`cairn-runtime`): started from its
//! options, held as a [`Running`] handle with its status as a watch, and
//! stopped with a graceful, draining `shutdown`, in the order [`Stage`]
//! declares once for every runtime.
//!
//! Architecture invariant: this crate declares; it opens no store, broker
//! or socket of its own.

mod descriptor;
pub mod live;

pub use cairn_runtime::{Background, Running, Stage, shutdown_all};
pub use descriptor::{
    ConsumerGroup, CrossReads, Env, Export, Import, Layout, MakeAudit, MessageDecl,
    ServiceDescriptor, Started, Topology,
};

pub use cairn_domain::bus::Access;
