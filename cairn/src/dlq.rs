//! `cairn dlq`: the dead letters of a service's consumers. Dead letters live
//! in the service's database, named by `--store` (for `cairn up`,
//! `data/read-models.db`, the default; for a PostgreSQL deployment, the
//! service's read-model schema, `…?schema=<service>_read`). No command
//! creates that database or its table. `list` prints
//! one JSON object per line; `show` prints one letter with its message;
//! `replay` marks letters for the running consumer to handle again within
//! about a second; `drop` deletes them for good.

use std::io::Write;

use anyhow::{Context, bail};
use cairn_messaging::{DeadLetterFilter, DeadLetters};
use cairn_service_db::ServiceDb;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::store_url::{Expect, StoreArgs, StoreUrl, Usage, require_existing};

/// The table a service database keeps its dead letters in.
const DEAD_LETTERS_TABLE: &str = "cairn_dead_letters";

#[derive(Debug, Args)]
#[command(mut_arg("store", |a| a.help(
    "The service's own database (`cairn run`'s --db), e.g. \
     postgres://USER@HOST/DB?schema=passengers_read. Default: \
     read-models.db under --data-dir, as `cairn up` keeps it",
)))]
pub(crate) struct DbArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Older name of --store.
    #[arg(
        long,
        env = "CAIRN_DB",
        hide = true,
        hide_env = true,
        conflicts_with = "store"
    )]
    db: Option<String>,
    /// Only this consumer's dead letters.
    #[arg(long)]
    consumer: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters, oldest first, one JSON object per line (without
    /// the message body).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with its message.
    Show {
        #[command(flatten)]
        db: DbArgs,
        /// The event id.
        id: String,
    },
    /// Hand dead letters back to their consumer: one by id, or all with --all.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete dead letters for good: one by id, or all with --all.
    Drop {
        #[command(flatten)]
        db: DbArgs,
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

/// Opens the dead letters of an existing service database; creates
/// nothing, even for `replay` and `drop` (no table, no letters to change).
async fn open(args: &DbArgs) -> anyhow::Result<DeadLetters> {
    let url = match &args.db {
        Some(db) => db.clone(),
        None => args.store.service_db_url(),
    };
    require_existing(
        &url,
        Expect::ServiceDb {
            tables: &[DEAD_LETTERS_TABLE],
        },
    )
    .await?;
    let what = StoreUrl::parse(&url)?.redacted();
    let db = ServiceDb::open(&url)
        .await
        .with_context(|| format!("cannot open {what}"))?;
    Ok(DeadLetters::open(db).await?)
}

fn filter(args: &DbArgs, id: Option<String>, all: bool) -> anyhow::Result<DeadLetterFilter> {
    if id.is_none() && !all {
        return Err(Usage("name a dead letter's event id, or pass --all".into()).into());
    }
    Ok(DeadLetterFilter {
        consumer: args.consumer.clone(),
        event_id: id,
    })
}

pub(crate) async fn run(cmd: DlqCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DlqCommand::List { db, limit } => {
            let letters = open(&db).await?;
            let filter = DeadLetterFilter {
                consumer: db.consumer.clone(),
                event_id: None,
            };
            for letter in letters.list(&filter, limit).await? {
                let mut value = serde_json::to_value(&letter)?;
                if let Some(map) = value.as_object_mut() {
                    map.remove("body");
                }
                writeln!(out, "{value}")?;
            }
        }
        DlqCommand::Show { db, id } => {
            let letters = open(&db).await?;
            let filter = DeadLetterFilter {
                consumer: db.consumer.clone(),
                event_id: Some(id.clone()),
            };
            let found = letters.list(&filter, 10).await?;
            match found.as_slice() {
                [] => bail!("no dead letter {id}"),
                [letter] => {
                    let mut value = serde_json::to_value(letter)?;
                    let body = serde_json::from_str::<serde_json::Value>(&letter.body)
                        .unwrap_or_else(|_| json!(letter.body));
                    value["body"] = body;
                    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
                }
                many => bail!(
                    "{id} is a dead letter of {} consumers; pick one with --consumer",
                    many.len()
                ),
            }
        }
        DlqCommand::Replay { db, id, all } => {
            let filter = filter(&db, id, all)?;
            let n = open(&db).await?.replay(&filter).await?;
            if n == 0 && filter.event_id.is_some() {
                bail!("no such dead letter");
            }
            writeln!(out, "{}", json!({ "markedForReplay": n }))?;
        }
        DlqCommand::Drop { db, id, all } => {
            let filter = filter(&db, id, all)?;
            let n = open(&db).await?.drop(&filter).await?;
            if n == 0 && filter.event_id.is_some() {
                bail!("no such dead letter");
            }
            writeln!(out, "{}", json!({ "dropped": n }))?;
        }
    }
    Ok(())
}
