//! Cairn's write side, in process.
//!
//! - [`Aggregate`]: aggregates as deciders (`decide(command) -> events`,
//!   `apply(event)`), pure and testable without a store.
//! - [`AggregateStore`]: loads an aggregate (latest snapshot + later events),
//!   decides, appends on the loaded version and retries a bounded number of
//!   times when another writer won; commands on one aggregate take turns
//!   within a process; snapshot policy; tombstones.
//! - [`testing`]: given/when/then specifications for aggregates.
//! - [`bus`]: typed command and query buses with a middleware chain
//!   (tracing, authorization hook, validation, custom links), the only way
//!   bounded contexts talk to each other.
//!
//! Every operation takes the caller's [`cairn_core::RequestContext`]: its
//! tenant scopes the store, its correlation, causation, trace and actor go
//! into the metadata of the events written. No HTTP and no SQL here.

mod aggregate;
pub mod bus;
mod cache;
mod queue;
mod repository;
pub mod testing;

pub use aggregate::{Aggregate, DomainError, Loaded};
pub use bus::{
    BusConfig, BusError, Command, CommandBus, CommandHandler, MessageInfo, MessageKind, Query,
    QueryBus, QueryHandler,
};
pub use queue::{StreamQueues, Turn};
pub use repository::{
    AggregateOptions, AggregateStore, CommandError, CommandOutcome, DEFAULT_CACHE_BYTES,
};
