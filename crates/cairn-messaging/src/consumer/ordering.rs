//! Per-stream order: the inbox keeps each stream's last handled version
//! (its cursor), locked for the transaction so instances take turns, and an
//! event whose predecessor is missing waits, for at most `order_wait`.

use super::*;

impl Core {
    /// The cursors of `streams` (`(tenant, stream)`, sorted, distinct; -1
    /// before a stream's first event), locked until the transaction ends so
    /// two instances take turns on a stream. Two statements whatever the
    /// number of streams: one creates the missing cursors, one reads and
    /// locks them all in a fixed order (so two instances never wait on each
    /// other).
    pub(super) async fn lock_streams<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        streams: &[(&'a str, &'a str)],
    ) -> Result<HashMap<(&'a str, &'a str), i64>, sqlx::Error> {
        let mut cursors = HashMap::with_capacity(streams.len());
        if streams.is_empty() {
            return Ok(cursors);
        }
        let mut insert = String::from(
            "INSERT INTO cairn_inbox_streams (consumer, tenant, stream, last_version) VALUES ",
        );
        insert.push_str(&schema::placeholder_rows(streams.len(), 3, 0, ", ", |p| {
            format!("({}, -1)", p.join(", "))
        }));
        let mut select = String::from(
            "SELECT tenant, stream, last_version FROM cairn_inbox_streams WHERE consumer = $1 AND (",
        );
        select.push_str(&schema::placeholder_rows(
            streams.len(),
            2,
            1,
            " OR ",
            |p| format!("(tenant = {} AND stream = {})", p[0], p[1]),
        ));
        insert.push_str(" ON CONFLICT (consumer, tenant, stream) DO NOTHING");
        select.push_str(") ORDER BY tenant, stream");
        if self.db.kind() == DbKind::Postgres {
            select.push_str(" FOR UPDATE");
        }
        let mut query = sqlx::query(&insert);
        for (tenant, stream) in streams {
            query = query.bind(&self.group).bind(*tenant).bind(*stream);
        }
        query.execute(&mut **tx).await?;
        let mut query = sqlx::query_as::<_, (String, String, i64)>(&select).bind(&self.group);
        for (tenant, stream) in streams {
            query = query.bind(*tenant).bind(*stream);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        for (tenant, stream, version) in rows {
            if let Some(key) = streams
                .iter()
                .find(|(t, s)| *t == tenant.as_str() && *s == stream.as_str())
            {
                cursors.insert(*key, version);
            }
        }
        Ok(cursors)
    }

    pub(super) fn waited_too_long(&self, id: EventId) -> bool {
        let waiting = self.waiting.lock().expect("waiting lock");
        waiting
            .get(&id)
            .is_some_and(|since| since.elapsed() >= self.options.order_wait)
    }

    pub(super) fn forget_wait(&self, id: EventId) {
        self.waiting.lock().expect("waiting lock").remove(&id);
    }

    /// The stream's last handled version (-1 if none), locked until the
    /// transaction ends so two instances take turns on a stream.
    pub(super) async fn lock_cursor(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<i64, sqlx::Error> {
        let key = (event.tenantid.as_str(), event.subject.as_str());
        let cursors = self.lock_streams(tx, &[key]).await?;
        Ok(cursors.get(&key).copied().unwrap_or(-1))
    }
}

pub(super) async fn set_cursor(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    event: &IntegrationEvent,
    version: i64,
) -> Result<(), sqlx::Error> {
    set_cursors(
        tx,
        group,
        &[(event.tenantid.as_str(), event.subject.as_str(), version)],
    )
    .await
}

/// Moves the cursors of `moved` (`(tenant, stream, version)`, cursors
/// already locked) in one statement.
pub(super) async fn set_cursors(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    moved: &[(&str, &str, i64)],
) -> Result<(), sqlx::Error> {
    if moved.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("UPDATE cairn_inbox_streams SET last_version = v.version FROM (");
    sql.push_str(&schema::placeholder_rows(
        moved.len(),
        3,
        1,
        " UNION ALL ",
        |p| {
            format!(
                "SELECT {} AS tenant, {} AS stream, {} AS version",
                p[0], p[1], p[2]
            )
        },
    ));
    sql.push_str(
        ") AS v WHERE cairn_inbox_streams.consumer = $1
         AND cairn_inbox_streams.tenant = v.tenant AND cairn_inbox_streams.stream = v.stream",
    );
    let mut query = sqlx::query(&sql).bind(group);
    for (tenant, stream, version) in moved {
        query = query.bind(*tenant).bind(*stream).bind(*version);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}
