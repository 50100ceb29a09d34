//! `cairn dlq`: the dead letters of a service's consumers. Dead letters live
//! in the service's database (for `cairn up`, `data/read-models.db`; for a
//! PostgreSQL deployment, the service's read-model schema). `list` prints
//! one JSON object per line; `show` prints one letter with its message;
//! `replay` marks letters for the running consumer to handle again within
//! about a second; `drop` deletes them for good.

use std::io::Write;

use anyhow::{Context, bail};
use cairn_messaging::{DeadLetterFilter, DeadLetters};
use cairn_projection::ReadDb;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// The service database: sqlite://PATH or postgres://USER@HOST/DB?schema=S.
    #[arg(long, env = "CAIRN_DB", default_value = "sqlite://data/read-models.db")]
    db: String,
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

async fn open(args: &DbArgs) -> anyhow::Result<DeadLetters> {
    let db = ReadDb::open(&args.db)
        .await
        .with_context(|| format!("cannot open {}", args.db))?;
    Ok(DeadLetters::open(db).await?)
}

fn filter(args: &DbArgs, id: Option<String>, all: bool) -> anyhow::Result<DeadLetterFilter> {
    if id.is_none() && !all {
        bail!("name a dead letter's event id, or pass --all");
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
