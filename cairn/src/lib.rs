//! `cairn`: the platform binary: the whole platform in one process
//! (`cairn up`), one service on its own (`cairn run <service>`), the
//! operator tools for the event store (`cairn events ...`) and for
//! identity (`cairn tenants ...`, `cairn users ...`, `cairn token`) and the
//! benchmarks (`cairn bench ...`).
//!
//! As a library it is the runtime: [`up::start_from`] and
//! [`run::start_from`] start any list of service descriptors
//! ([`services::all`] is the platform's), which is how a new service joins
//! without a line here.

mod auth;
mod cors;
mod dlq;
mod events;
mod gateway;
mod identity_cli;
mod ops;
mod platform;
mod projections_cli;
pub mod run;
pub mod services;
mod store_url;
pub mod up;

pub use platform::Platform;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: under the messaging pipeline's
/// load (many small, short-lived buffers passed between threads) glibc's
/// malloc and free took about a third of the process's CPU (see
/// `docs/benchmarks.md`).
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

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Read and write events in a store.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Run the whole platform in one process (flights, passengers, audit).
    Up(up::UpArgs),
    /// Measure throughput and latency beside a baseline on the same machine.
    #[command(subcommand)]
    Bench(cairn_bench::BenchCommand),
    /// Run one service on its own, talking to the others through a broker,
    /// or the gateway in front of them.
    Run(run::RunArgs),
    /// See, retry, skip or rebuild the projections of a running system
    /// (through its admin API).
    #[command(subcommand)]
    Projections(projections_cli::ProjectionsCommand),
    /// List, show, replay or drop the dead letters of a service's consumers.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// List or create tenants, straight on the store (no server needed).
    #[command(subcommand)]
    Tenants(identity_cli::TenantsCommand),
    /// List or create a tenant's users, straight on the store.
    #[command(subcommand)]
    Users(identity_cli::UsersCommand),
    /// Mint an access token for a user, straight on the store; prints only
    /// the token.
    Token(identity_cli::TokenArgs),
}

/// A failure that is the caller's (bad input, a store that does not
/// exist): exit code 2, for every command.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Logs go to stderr (stdout carries command output): `RUST_LOG` picks
/// what (default `warn`, lapin's own at `error`), `CAIRN_LOG_FORMAT=json` prints one JSON object
/// per line.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("CAIRN_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The `cairn` command line: parses the arguments, runs the command and
/// says how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    quiet_on_broken_pipe();
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
            Command::Bench(cmd) => cairn_bench::run(cmd).await,
            Command::Up(args) => up::run(args).await,
            Command::Dlq(cmd) => dlq::run(cmd).await,
            Command::Projections(cmd) => projections_cli::run(cmd).await,
            Command::Run(args) => run::run(args).await,
            Command::Tenants(cmd) => identity_cli::tenants(cmd).await,
            Command::Users(cmd) => identity_cli::users(cmd).await,
            Command::Token(args) => identity_cli::token(args).await,
        }
    });
    exit_code(result)
}

/// Exit codes, the same for every command: 0 done, 1 failed, 2 the
/// caller's mistake ([`Usage`]: bad input, a store that
/// does not exist). A reader that stopped reading (`cairn events all | head`)
/// is not a failure: the command ends quietly with 0.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if is_broken_pipe(&e) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {e:#}");
    if is_usage(&e) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Whether `e` is the caller's mistake: a [`Usage`] error, or a store URL
/// that names no store.
fn is_usage(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| cause.is::<Usage>() || cause.is::<cairn_store::InvalidStoreUrl>())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout is a closed pipe; for every command that
/// is a reader gone away, not a crash: end quietly with 0. Any other panic
/// is reported as before.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // The panic carries only text: the OS's words for EPIPE (Rust
        // programs run in the C locale).
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}
