//! `cairn bench`: benchmarks that measure Cairn beside a baseline run on the
//! same machine, in the same run, so a figure always comes with the ceiling
//! it should be judged against.
//!
//! Every suite prints a table and, with `--json FILE`, writes a JSON array of
//! `{name, value, unit, baseline, baseline_value, ratio}` (see [`report`]).
//! Today there is one suite, `cairn bench store` ([`store`]): append and
//! catch-up throughput of the event store against raw SQL on the same
//! database.

mod baseline;
mod report;
mod store;
mod workload;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Event store throughput and latency beside raw SQL on the same database.
    #[command(long_about = store::LONG_ABOUT)]
    Store(store::StoreArgs),
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(args) => store::run(args).await,
    }
}
