//! `cairn`: the platform binary: the whole platform in one process
//! (`cairn up`), the operator tools for the event store (`cairn events ...`)
//! and the benchmarks (`cairn bench ...`).

mod bench;
mod events;
mod store_url;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: event-driven microservices on an event store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read and write events in a store.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Run the whole platform in one process (flights, passengers, audit).
    Up(up::UpArgs),
    /// Measure throughput and latency beside a baseline on the same machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Events(cmd) => events::run(cmd).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Up(args) => up::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
