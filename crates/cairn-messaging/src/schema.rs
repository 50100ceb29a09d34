//! The tables the relay and the consumers keep in a service's own database
//! (portable SQL for SQLite and PostgreSQL, through [`ServiceDb`]).

use cairn_service_db::ServiceDb;

const TABLES: &[&str] = &[
    // Relay: how far in `$all` a relay has published...
    "CREATE TABLE IF NOT EXISTS cairn_relay_checkpoints (
        relay TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    // ... and the last public version it published per stream, which the
    // next event of that stream names as its `prevsequence`.
    "CREATE TABLE IF NOT EXISTS cairn_relay_streams (
        relay TEXT NOT NULL,
        tenant TEXT NOT NULL,
        stream TEXT NOT NULL,
        last_version BIGINT NOT NULL,
        PRIMARY KEY (relay, tenant, stream)
    )",
    // How far each in-process consumer group has settled the log.
    "CREATE TABLE IF NOT EXISTS cairn_log_consumers (
        consumer TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        updated_at TEXT NOT NULL
    )",
    // Consumer inbox: every event a consumer has handled, written in the
    // same transaction as the handler's effect.
    "CREATE TABLE IF NOT EXISTS cairn_inbox (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        stream TEXT NOT NULL,
        version BIGINT NOT NULL,
        handled_at TEXT NOT NULL,
        PRIMARY KEY (consumer, event_id)
    )",
    // Per-stream order: the highest version a consumer has handled (or
    // dead-lettered) per stream; -1 before the first.
    "CREATE TABLE IF NOT EXISTS cairn_inbox_streams (
        consumer TEXT NOT NULL,
        tenant TEXT NOT NULL,
        stream TEXT NOT NULL,
        last_version BIGINT NOT NULL,
        PRIMARY KEY (consumer, tenant, stream)
    )",
    // Failed attempts of events not yet handled.
    "CREATE TABLE IF NOT EXISTS cairn_consumer_failures (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        last_error TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (consumer, event_id)
    )",
    // The dead-letter queue: events a consumer gave up on, as they came.
    "CREATE TABLE IF NOT EXISTS cairn_dead_letters (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        tenant TEXT,
        stream TEXT,
        event_type TEXT,
        body TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        error TEXT NOT NULL,
        dead_at TEXT NOT NULL,
        replay BIGINT NOT NULL,
        PRIMARY KEY (consumer, event_id)
    )",
];

/// Creates the messaging tables if they are missing.
pub(crate) async fn ensure(db: &ServiceDb) -> Result<(), sqlx::Error> {
    for statement in TABLES {
        sqlx::query(statement).execute(db.pool()).await?;
    }
    Ok(())
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The numbered placeholders of a multi-row statement: `rows` rows of
/// `width` parameters each, numbered from `after + 1`, each row written by
/// `row` from its placeholders and the rows joined with `sep`. `$n`
/// placeholders, which PostgreSQL and SQLite both take: what an
/// [`EventHandler::handle_batch`](crate::EventHandler::handle_batch) needs
/// to write a run of events in one statement.
///
/// ```
/// let values = cairn_messaging::placeholder_rows(2, 3, 0, ", ", |p| format!("({})", p.join(", ")));
/// assert_eq!(values, "($1, $2, $3), ($4, $5, $6)");
/// ```
pub fn placeholder_rows(
    rows: usize,
    width: usize,
    after: usize,
    sep: &str,
    row: impl Fn(&[String]) -> String,
) -> String {
    (0..rows)
        .map(|n| {
            let params: Vec<String> = (1..=width)
                .map(|k| format!("${}", after + n * width + k))
                .collect();
            row(&params)
        })
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::placeholder_rows;

    #[test]
    fn placeholder_rows_number_on_from_the_offset() {
        assert_eq!(
            placeholder_rows(2, 3, 0, ", ", |p| format!("({})", p.join(", "))),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(
            placeholder_rows(2, 2, 1, " OR ", |p| format!(
                "(a = {} AND b = {})",
                p[0], p[1]
            )),
            "(a = $2 AND b = $3) OR (a = $4 AND b = $5)"
        );
        assert_eq!(placeholder_rows(0, 3, 0, ", ", |p| p.join(",")), "");
    }
}
