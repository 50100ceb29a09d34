//! `cairn events`: operator access to a store. Every command prints JSON
//! (one object per line for lists) on stdout, and errors as one line on
//! stderr with a non-zero exit (2 for bad input or a missing store).
//!
//! Only `append` writes, and only it may create the store. It writes into
//! the same store the services read, so a payload of a type a service
//! declares is checked first with that service's own event types
//! (`check_event`): what it could not read is refused, not stored.

use std::{io::Write, sync::Arc};

use anyhow::{Context, anyhow};
use cairn_core::{DecodeError, EventId, Metadata, NewEvent, StreamId, TenantId};
use cairn_store::{AllFilter, EventStore, ExpectedVersion, ReadStream, StoreError};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::store_url::{IfMissing, StoreArgs, Usage, open_event_store};

/// The store and the tenant every `cairn events` command works on.
#[derive(Debug, Args)]
pub(crate) struct EventStoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Tenant whose streams to use.
    #[arg(long, env = "CAIRN_TENANT")]
    tenant: String,
}

impl EventStoreArgs {
    fn tenant(&self) -> anyhow::Result<TenantId> {
        Ok(TenantId::new(&self.tenant)?)
    }

    /// Opens the event store; only `append` may create it.
    async fn open(&self, if_missing: IfMissing) -> anyhow::Result<Arc<dyn EventStore>> {
        open_event_store(&self.store.event_store_url(), if_missing).await
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Append one event; prints the stored version and position.
    Append {
        #[command(flatten)]
        store: EventStoreArgs,
        #[arg(long)]
        stream: String,
        /// Event type, e.g. FlightScheduled.
        #[arg(long = "type")]
        event_type: String,
        /// JSON payload.
        #[arg(long)]
        data: String,
        /// Event id (UUID); a new UUIDv7 when absent. Resending an id is idempotent.
        #[arg(long)]
        id: Option<String>,
        /// any, no-stream, exists or a version number.
        #[arg(long, default_value = "any")]
        expected: String,
        /// Metadata JSON: {"correlationId","causationId","traceparent","actor"}.
        #[arg(long)]
        metadata: Option<String>,
        /// Schema version of the payload.
        #[arg(long, default_value_t = 1)]
        schema_version: u32,
        /// Store the payload unchecked. Without it, a payload of an event
        /// type a service declares must decode as that service reads it.
        #[arg(long)]
        raw: bool,
    },
    /// Read one stream, one event per line.
    Read {
        #[command(flatten)]
        store: EventStoreArgs,
        #[arg(long)]
        stream: String,
        /// First version to read (last when --backward).
        #[arg(long)]
        from: Option<u64>,
        /// Newest first.
        #[arg(long)]
        backward: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Read the global log, one event per line.
    All {
        #[command(flatten)]
        store: EventStoreArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Start after this global position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Follow the global log live, one event per line.
    Tail {
        #[command(flatten)]
        store: EventStoreArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Start after this global position (default: the current end).
        #[arg(long)]
        after: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List the tenant's streams, one per line.
    Streams {
        #[command(flatten)]
        store: EventStoreArgs,
        /// Start after this stream id.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Only this category (repeatable): `flight` or `flight-*`.
    #[arg(long = "category")]
    categories: Vec<String>,
    /// Only this event type (repeatable).
    #[arg(long = "type")]
    event_types: Vec<String>,
    /// Every tenant's events instead of --tenant's (platform operators only).
    #[arg(long)]
    all_tenants: bool,
}

impl FilterArgs {
    fn filter(&self, tenant: TenantId) -> AllFilter {
        let base = if self.all_tenants {
            AllFilter::all_tenants()
        } else {
            AllFilter::tenant(tenant)
        };
        base.categories(&self.categories)
            .event_types(self.event_types.iter().cloned())
    }
}

/// A service's check of its own event payloads (`check_event`).
type PayloadCheck = fn(&str, u32, &Value) -> Option<Result<(), DecodeError>>;

/// Every service whose events share the store, asked in turn who declares
/// an event type.
const PAYLOAD_CHECKS: &[(&str, PayloadCheck)] = &[
    ("flights", cairn_flights::check_event),
    ("passengers", cairn_passengers::check_event),
    ("identity", cairn_identity::check_event),
];

/// Refuses a payload the service owning its type could not read: written
/// into the store the services read, it would stop their projections.
/// Returns whether a service declares the type.
fn check_payload(event_type: &str, schema_version: u32, data: &Value) -> anyhow::Result<bool> {
    for (service, check) in PAYLOAD_CHECKS {
        match check(event_type, schema_version, data) {
            None => continue,
            Some(Ok(())) => return Ok(true),
            Some(Err(e)) => {
                return Err(Usage(format!(
                    "{service} would not read this {event_type}: {e}; nothing was written \
                     (--raw stores it unchecked)"
                ))
                .into());
            }
        }
    }
    Ok(false)
}

/// Store errors keep their stable code on the one line the user sees.
fn store_error(e: StoreError) -> anyhow::Error {
    anyhow!("{e} [{}]", e.code())
}

fn print_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

pub(crate) async fn run(cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Append {
            store,
            stream,
            event_type,
            data,
            id,
            expected,
            metadata,
            schema_version,
            raw,
        } => {
            let tenant = store.tenant()?;
            let stream = StreamId::new(&stream)?;
            let expected: ExpectedVersion = expected.parse()?;
            let data: Value = serde_json::from_str(&data)
                .map_err(|e| Usage(format!("--data is not valid JSON: {e}")))?;
            let unchecked = !raw && !check_payload(&event_type, schema_version, &data)?;
            let metadata: Metadata = match metadata {
                Some(m) => {
                    serde_json::from_str(&m).context("--metadata is not valid metadata JSON")?
                }
                None => Metadata::default(),
            };
            let mut event = NewEvent::new(event_type.clone(), data)
                .with_metadata(metadata)
                .with_schema_version(schema_version);
            if let Some(id) = id {
                event = event.with_id(id.parse::<EventId>()?);
            }
            let event_id = event.id;
            let store = store.open(IfMissing::Create).await?;
            let out = store
                .append(&tenant, &stream, expected, vec![event])
                .await
                .map_err(store_error)?;
            if unchecked {
                eprintln!(
                    "note: no service declares event type {event_type}; its payload was stored unchecked"
                );
            }
            print_line(&json!({
                "tenant": tenant,
                "stream": stream,
                "eventId": event_id,
                "version": out.last_version,
                "position": out.last_position,
            }))
        }
        EventsCommand::Read {
            store,
            stream,
            from,
            backward,
            limit,
        } => {
            let tenant = store.tenant()?;
            let stream = StreamId::new(&stream)?;
            let read = match (backward, from) {
                (false, None) => ReadStream::all(),
                (false, Some(v)) => ReadStream::forward_from(v),
                (true, None) => ReadStream::backward(),
                (true, Some(v)) => ReadStream::backward_from(v),
            }
            .limit(limit);
            let store = store.open(IfMissing::Fail).await?;
            for e in store
                .read_stream(&tenant, &stream, read)
                .await
                .map_err(store_error)?
            {
                print_line(&e)?;
            }
            Ok(())
        }
        EventsCommand::All {
            store,
            filter,
            after,
            limit,
        } => {
            let filter = filter.filter(store.tenant()?);
            let store = store.open(IfMissing::Fail).await?;
            let mut after = after;
            let mut left = limit;
            while left > 0 {
                let page = store
                    .read_all(after, &filter, left.min(1000))
                    .await
                    .map_err(store_error)?;
                let Some(last) = page.last() else { break };
                after = last.position;
                left -= page.len();
                for e in &page {
                    print_line(e)?;
                }
            }
            Ok(())
        }
        EventsCommand::Tail {
            store,
            filter,
            after,
            count,
        } => {
            let filter = filter.filter(store.tenant()?);
            let store = store.open(IfMissing::Fail).await?;
            let after = match after {
                Some(a) => a,
                None => *store.head().borrow(),
            };
            let mut sub = store.subscribe_all(after, filter);
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                tokio::select! {
                    next = sub.next() => match next {
                        Some(Ok(e)) => { print_line(&e)?; seen += 1; }
                        Some(Err(e)) => eprintln!("warning: {e}; retrying"),
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            Ok(())
        }
        EventsCommand::Streams {
            store,
            after,
            limit,
        } => {
            let tenant = store.tenant()?;
            let after = after.map(StreamId::new).transpose()?;
            let store = store.open(IfMissing::Fail).await?;
            let mut after = after;
            let mut left = limit;
            while left > 0 {
                let page = store
                    .list_streams(&tenant, after.as_ref(), left.min(1000))
                    .await
                    .map_err(store_error)?;
                let Some(last) = page.last() else { break };
                after = Some(last.stream.clone());
                left -= page.len();
                for s in &page {
                    print_line(s)?;
                }
            }
            Ok(())
        }
    }
}
