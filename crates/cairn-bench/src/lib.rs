//! `cairn bench`: benchmarks that measure Cairn beside a baseline run on the
//! same machine, in the same run, so a figure always comes with the ceiling
//! it should be judged against.
//!
//! Every suite prints a table and, with `--json FILE`, writes a JSON array of
//! `{name, value, unit, baseline, baseline_value, ratio}` (see [`report`]).
//! The suites:
//! - `cairn bench store` ([`store`]): append and catch-up throughput of the
//!   event store against raw SQL on the same database.
//! - `cairn bench messaging` ([`messaging`]): integration events from append
//!   to a consumer's handler through the relay and NATS JetStream or
//!   RabbitMQ, against acknowledged publishes with the broker's raw client.
//! - `cairn bench commands` ([`commands`]): HTTP commands through a real
//!   `cairn up`, against the store's append rate at the same concurrency.
//! - `cairn bench live` ([`live`]): the live API of a real `cairn up` with
//!   many subscribed WebSocket clients under a fixed rate of commands,
//!   against a raw broadcast over the same WebSocket stack.

mod baseline;
mod command_path;
pub mod commands;
pub mod live;
pub mod messaging;
mod report;
pub mod store;
mod up;
mod workload;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event store throughput and latency beside raw SQL on the same database.
    #[command(long_about = store::LONG_ABOUT)]
    Store(store::StoreArgs),
    /// Integration events end to end (append, relay, broker, consumer)
    /// beside the broker's raw acknowledged-publish ceiling.
    #[command(long_about = messaging::LONG_ABOUT)]
    Messaging(messaging::MessagingArgs),
    /// HTTP commands through a real `cairn up` (schedule, add, board):
    /// throughput, latency and command-to-read-model time beside the
    /// store's append rate.
    #[command(long_about = commands::LONG_ABOUT)]
    Commands(commands::CommandsArgs),
    /// The live API (`/ws`) with many subscribed clients under a fixed
    /// rate of commands: updates/s, command-to-client latency and memory
    /// per connection, beside a raw WebSocket broadcast.
    #[command(long_about = live::LONG_ABOUT)]
    Live(live::LiveArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(args) => store::run(args).await,
        BenchCommand::Messaging(args) => messaging::run(args).await,
        BenchCommand::Commands(args) => commands::run(args).await,
        BenchCommand::Live(args) => live::run(args).await,
    }
}
