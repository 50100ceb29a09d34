//! The flights read model: one row per live flight, with its passenger
//! counts, fed by the Flights context's own events and the Passengers
//! context's public ones.

use async_trait::async_trait;
use cairn_core::{RecordedEvent, TenantId, decode_event};
use cairn_flightops_contracts::Page;
use cairn_projection::{Projection, ProjectionError};
use cairn_service_db::ServiceDb;
use cairn_store::AllFilter;
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction, any::AnyRow};

use crate::domain::FlightEvent;

/// The projection's name (its checkpoint key).
pub const PROJECTION: &str = "flights.flights";

/// A flight as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlightView {
    pub id: String,
    pub number: String,
    pub origin: String,
    pub destination: String,
    /// RFC 3339, UTC.
    pub departure: String,
    /// RFC 3339, UTC.
    pub arrival: String,
    pub capacity: u32,
    /// `scheduled`, `departed` or `landed`.
    pub status: String,
    pub passengers: PassengerCounts,
    /// The flight's stream version: its `ETag`, and what `If-Match` names.
    pub version: u64,
}

/// How many passengers a flight has, and how many boarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassengerCounts {
    pub total: u32,
    pub boarded: u32,
}

/// Filters of `GET /api/flights`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlightFilter {
    pub status: Option<String>,
    pub origin: Option<String>,
    pub destination: Option<String>,
    pub number: Option<String>,
    /// Flights created after this id (the previous page's `next`).
    pub after: Option<String>,
    pub limit: u32,
}

/// Feeds `flights_view` and `flights_view_passengers` from the log: the
/// flight events and, when both contexts share one log (`cairn up`), the
/// Passengers context's events too.
#[derive(Debug, Default)]
pub struct FlightsProjection;

/// The same projection reading only the `flight` category: for Flights on
/// its own, where passenger counts come from Passengers' integration events
/// (see [`crate::messaging::passenger_events`]).
#[derive(Debug, Default)]
pub struct OwnFlightsProjection;

#[async_trait]
impl Projection for OwnFlightsProjection {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants().categories(["flight"])
    }

    fn schema(&self) -> Vec<String> {
        FlightsProjection.schema()
    }

    /// A rebuild keeps `flights_view_passengers`: it is fed by the
    /// consumer, not by this log, and the rebuilt flights count from it.
    fn reset(&self) -> Vec<String> {
        vec!["DROP TABLE IF EXISTS flights_view".into()]
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        FlightsProjection.apply(tx, event).await
    }
}

const COLUMNS: &str = "id, number, origin, destination, departure, arrival, capacity, status, \
                       passengers_total, passengers_boarded, version";

#[async_trait]
impl Projection for FlightsProjection {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants().categories(["flight", "manifest"])
    }

    fn schema(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS flights_view (
                tenant_id TEXT NOT NULL,
                id TEXT NOT NULL,
                number TEXT NOT NULL,
                origin TEXT NOT NULL,
                destination TEXT NOT NULL,
                departure TEXT NOT NULL,
                arrival TEXT NOT NULL,
                capacity BIGINT NOT NULL,
                status TEXT NOT NULL,
                passengers_total BIGINT NOT NULL DEFAULT 0,
                passengers_boarded BIGINT NOT NULL DEFAULT 0,
                version BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, id))"
                .into(),
            "CREATE TABLE IF NOT EXISTS flights_view_passengers (
                tenant_id TEXT NOT NULL,
                flight_id TEXT NOT NULL,
                passenger_id TEXT NOT NULL,
                boarded BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, flight_id, passenger_id))"
                .into(),
        ]
    }

    fn reset(&self) -> Vec<String> {
        vec![
            "DROP TABLE IF EXISTS flights_view".into(),
            "DROP TABLE IF EXISTS flights_view_passengers".into(),
        ]
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let tenant = event.tenant.as_str();
        let version = event.version as i64;
        if event.stream.category().as_str() == "flight" {
            let decoded: FlightEvent = decode_event(&Default::default(), event)
                .map_err(|e| ProjectionError::poison(e.to_string()))?;
            match decoded {
                FlightEvent::FlightScheduled {
                    flight_id,
                    schedule,
                } => {
                    // Passengers' events may arrive first when they come
                    // through the broker: count what is already there.
                    sqlx::query(
                        "INSERT INTO flights_view (tenant_id, id, number, origin, destination,
                             departure, arrival, capacity, status, version,
                             passengers_total, passengers_boarded)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'scheduled', $9,
                             (SELECT COUNT(*) FROM flights_view_passengers
                              WHERE tenant_id = $1 AND flight_id = $2),
                             (SELECT COUNT(*) FROM flights_view_passengers
                              WHERE tenant_id = $1 AND flight_id = $2 AND boarded = 1))
                         ON CONFLICT (tenant_id, id) DO NOTHING",
                    )
                    .bind(tenant)
                    .bind(flight_id)
                    .bind(schedule.number)
                    .bind(schedule.origin)
                    .bind(schedule.destination)
                    .bind(rfc3339(schedule.departure))
                    .bind(rfc3339(schedule.arrival))
                    .bind(i64::from(schedule.capacity))
                    .bind(version)
                    .execute(&mut **tx)
                    .await?;
                }
                FlightEvent::FlightRescheduled {
                    flight_id,
                    departure,
                    arrival,
                } => {
                    sqlx::query(
                        "UPDATE flights_view SET departure = $3, arrival = $4, version = $5
                         WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant)
                    .bind(flight_id)
                    .bind(rfc3339(departure))
                    .bind(rfc3339(arrival))
                    .bind(version)
                    .execute(&mut **tx)
                    .await?;
                }
                FlightEvent::FlightDeparted { flight_id, .. } => {
                    set_status(tx, tenant, &flight_id, "departed", version).await?;
                }
                FlightEvent::FlightLanded { flight_id, .. } => {
                    set_status(tx, tenant, &flight_id, "landed", version).await?;
                }
                FlightEvent::FlightDeleted { flight_id } => {
                    for table in [
                        "flights_view WHERE tenant_id = $1 AND id = $2",
                        "flights_view_passengers WHERE tenant_id = $1 AND flight_id = $2",
                    ] {
                        sqlx::query(&format!("DELETE FROM {table}"))
                            .bind(tenant)
                            .bind(&flight_id)
                            .execute(&mut **tx)
                            .await?;
                    }
                }
            }
            return Ok(());
        }
        // The Passengers context's public events, read by their published
        // shape (this context does not link the other's code).
        let field = |name: &str| {
            event.data[name].as_str().map(str::to_owned).ok_or_else(|| {
                ProjectionError::poison(format!("{} has no {name}", event.event_type))
            })
        };
        match event.event_type.as_str() {
            "PassengerAdded" => {
                let (flight, passenger) = (field("flightId")?, field("passengerId")?);
                let added = sqlx::query(
                    "INSERT INTO flights_view_passengers (tenant_id, flight_id, passenger_id, boarded)
                     VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(&flight)
                .bind(&passenger)
                .execute(&mut **tx)
                .await?;
                if added.rows_affected() > 0 {
                    count(
                        tx,
                        tenant,
                        &flight,
                        "passengers_total = passengers_total + 1",
                    )
                    .await?;
                }
            }
            "PassengerBoarded" => {
                let (flight, passenger) = (field("flightId")?, field("passengerId")?);
                let boarded = sqlx::query(
                    "UPDATE flights_view_passengers SET boarded = 1
                     WHERE tenant_id = $1 AND flight_id = $2 AND passenger_id = $3 AND boarded = 0",
                )
                .bind(tenant)
                .bind(&flight)
                .bind(&passenger)
                .execute(&mut **tx)
                .await?;
                if boarded.rows_affected() > 0 {
                    count(
                        tx,
                        tenant,
                        &flight,
                        "passengers_boarded = passengers_boarded + 1",
                    )
                    .await?;
                }
            }
            "PassengerRemoved" => {
                let (flight, passenger) = (field("flightId")?, field("passengerId")?);
                let row = sqlx::query(
                    "SELECT boarded FROM flights_view_passengers
                     WHERE tenant_id = $1 AND flight_id = $2 AND passenger_id = $3",
                )
                .bind(tenant)
                .bind(&flight)
                .bind(&passenger)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(row) = row {
                    let was_boarded: i64 = row.try_get(0)?;
                    sqlx::query(
                        "DELETE FROM flights_view_passengers
                         WHERE tenant_id = $1 AND flight_id = $2 AND passenger_id = $3",
                    )
                    .bind(tenant)
                    .bind(&flight)
                    .bind(&passenger)
                    .execute(&mut **tx)
                    .await?;
                    let change = if was_boarded != 0 {
                        "passengers_total = passengers_total - 1, passengers_boarded = passengers_boarded - 1"
                    } else {
                        "passengers_total = passengers_total - 1"
                    };
                    count(tx, tenant, &flight, change).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn set_status(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    flight: &str,
    status: &str,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE flights_view SET status = $3, version = $4 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(flight)
    .bind(status)
    .bind(version)
    .execute(&mut **tx)
    .await
    .map(drop)
}

async fn count(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
    flight: &str,
    change: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE flights_view SET {change} WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(flight)
    .execute(&mut **tx)
    .await
    .map(drop)
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn from_row(row: &AnyRow) -> Result<FlightView, sqlx::Error> {
    let n = |name: &str| -> Result<u32, sqlx::Error> {
        Ok(row.try_get::<i64, _>(name)?.clamp(0, i64::from(u32::MAX)) as u32)
    };
    Ok(FlightView {
        id: row.try_get("id")?,
        number: row.try_get("number")?,
        origin: row.try_get("origin")?,
        destination: row.try_get("destination")?,
        departure: row.try_get("departure")?,
        arrival: row.try_get("arrival")?,
        capacity: n("capacity")?,
        status: row.try_get("status")?,
        passengers: PassengerCounts {
            total: n("passengers_total")?,
            boarded: n("passengers_boarded")?,
        },
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

/// One flight of `tenant`, if it exists. Like every query of this model,
/// it runs in a transaction scoped to `tenant` ([`ServiceDb::scoped`]).
pub async fn get(
    db: &ServiceDb,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<FlightView>, sqlx::Error> {
    let mut tx = db.scoped(tenant).await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM flights_view WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.as_str())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    row.as_ref().map(from_row).transpose()
}

/// A page of `tenant`'s flights, oldest first.
pub async fn list(
    db: &ServiceDb,
    tenant: &TenantId,
    filter: &FlightFilter,
) -> Result<Page<FlightView>, sqlx::Error> {
    let mut tx = db.scoped(tenant).await?;
    let mut conditions = vec!["tenant_id = $1".to_owned()];
    let mut values: Vec<&str> = vec![tenant.as_str()];
    for (column, value) in [
        ("status", &filter.status),
        ("origin", &filter.origin),
        ("destination", &filter.destination),
        ("number", &filter.number),
    ] {
        if let Some(v) = value {
            values.push(v);
            conditions.push(format!("{column} = ${}", values.len()));
        }
    }
    let where_clause = conditions.join(" AND ");
    let total_sql = format!("SELECT COUNT(*) FROM flights_view WHERE {where_clause}");
    let mut total_query = sqlx::query(&total_sql);
    for v in &values {
        total_query = total_query.bind(*v);
    }
    let total: i64 = total_query.fetch_one(&mut *tx).await?.try_get(0)?;

    let mut page_conditions = where_clause;
    if let Some(after) = &filter.after {
        values.push(after);
        page_conditions.push_str(&format!(" AND id > ${}", values.len()));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM flights_view WHERE {page_conditions} ORDER BY id LIMIT {}",
        u64::from(filter.limit) + 1
    );
    let mut query = sqlx::query(&sql);
    for v in &values {
        query = query.bind(*v);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > filter.limit as usize {
        items.truncate(filter.limit as usize);
        items.last().map(|f| f.id.clone())
    } else {
        None
    };
    Ok(Page {
        items,
        total: total.max(0) as u64,
        next,
    })
}
