//! The passengers read model: one row per passenger still on a flight.

use async_trait::async_trait;
use cairn_core::{RecordedEvent, TenantId, decode_event};
use cairn_flightops_contracts::Page;
use cairn_projection::{Projection, ProjectionError};
use cairn_service_db::ServiceDb;
use cairn_store::AllFilter;
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction, any::AnyRow};

use crate::domain::ManifestEvent;

/// The projection's name (its checkpoint key).
pub const PROJECTION: &str = "passengers.passengers";

/// A passenger as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassengerView {
    pub id: String,
    pub flight_id: String,
    pub name: String,
    pub document: String,
    pub boarded: bool,
    /// How many times this passenger changed after being added.
    pub version: u64,
}

/// Feeds `passengers_view`.
#[derive(Debug, Default)]
pub struct PassengersProjection;

const COLUMNS: &str = "id, flight_id, name, document, boarded, version";

#[async_trait]
impl Projection for PassengersProjection {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants().categories(["manifest"])
    }

    fn schema(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS passengers_view (
                tenant_id TEXT NOT NULL,
                id TEXT NOT NULL,
                flight_id TEXT NOT NULL,
                name TEXT NOT NULL,
                document TEXT NOT NULL,
                boarded BIGINT NOT NULL,
                version BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, id))"
                .into(),
            "CREATE INDEX IF NOT EXISTS passengers_view_flight
                ON passengers_view (tenant_id, flight_id, id)"
                .into(),
        ]
    }

    fn reset(&self) -> Vec<String> {
        vec!["DROP TABLE IF EXISTS passengers_view".into()]
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let tenant = event.tenant.as_str();
        let decoded: ManifestEvent = decode_event(&Default::default(), event)
            .map_err(|e| ProjectionError::poison(e.to_string()))?;
        match decoded {
            ManifestEvent::PassengerAdded {
                passenger_id,
                flight_id,
                name,
                document,
            } => {
                sqlx::query(
                    "INSERT INTO passengers_view (tenant_id, id, flight_id, name, document, boarded, version)
                     VALUES ($1, $2, $3, $4, $5, 0, 0) ON CONFLICT (tenant_id, id) DO NOTHING",
                )
                .bind(tenant)
                .bind(passenger_id)
                .bind(flight_id)
                .bind(name)
                .bind(document)
                .execute(&mut **tx)
                .await?;
            }
            ManifestEvent::PassengerBoarded { passenger_id, .. } => {
                sqlx::query(
                    "UPDATE passengers_view SET boarded = 1, version = version + 1
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant)
                .bind(passenger_id)
                .execute(&mut **tx)
                .await?;
            }
            ManifestEvent::PassengerRemoved { passenger_id, .. } => {
                sqlx::query("DELETE FROM passengers_view WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant)
                    .bind(passenger_id)
                    .execute(&mut **tx)
                    .await?;
            }
            ManifestEvent::BoardingClosed { .. } | ManifestEvent::BoardingReopened { .. } => {}
        }
        Ok(())
    }
}

fn from_row(row: &AnyRow) -> Result<PassengerView, sqlx::Error> {
    Ok(PassengerView {
        id: row.try_get("id")?,
        flight_id: row.try_get("flight_id")?,
        name: row.try_get("name")?,
        document: row.try_get("document")?,
        boarded: row.try_get::<i64, _>("boarded")? != 0,
        version: row.try_get::<i64, _>("version")?.max(0) as u64,
    })
}

/// One passenger of `tenant`, if still on a flight. Like every query of
/// this model, it runs in a transaction scoped to `tenant`
/// ([`ServiceDb::scoped`]).
pub async fn get(
    db: &ServiceDb,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<PassengerView>, sqlx::Error> {
    let mut tx = db.scoped(tenant).await?;
    let sql = format!("SELECT {COLUMNS} FROM passengers_view WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(&sql)
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    row.as_ref().map(from_row).transpose()
}

/// A page of `tenant`'s passengers, optionally of one flight, oldest first.
pub async fn list(
    db: &ServiceDb,
    tenant: &TenantId,
    flight_id: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<Page<PassengerView>, sqlx::Error> {
    let mut tx = db.scoped(tenant).await?;
    let mut values: Vec<&str> = vec![tenant.as_str()];
    let mut conditions = "tenant_id = $1".to_owned();
    if let Some(f) = flight_id {
        values.push(f);
        conditions.push_str(&format!(" AND flight_id = ${}", values.len()));
    }
    let total_sql = format!("SELECT COUNT(*) FROM passengers_view WHERE {conditions}");
    let mut total_query = sqlx::query(&total_sql);
    for v in &values {
        total_query = total_query.bind(*v);
    }
    let total: i64 = total_query.fetch_one(&mut *tx).await?.try_get(0)?;
    if let Some(a) = after {
        values.push(a);
        conditions.push_str(&format!(" AND id > ${}", values.len()));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM passengers_view WHERE {conditions} ORDER BY id LIMIT {}",
        u64::from(limit) + 1
    );
    let mut query = sqlx::query(&sql);
    for v in &values {
        query = query.bind(*v);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|p| p.id.clone())
    } else {
        None
    };
    Ok(Page {
        items,
        total: total.max(0) as u64,
        next,
    })
}

/// The flight a passenger is on (the manifest that holds them), if the
/// read model knows the passenger.
pub async fn flight_of(
    db: &ServiceDb,
    tenant: &TenantId,
    passenger_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = db.scoped(tenant).await?;
    let row = sqlx::query("SELECT flight_id FROM passengers_view WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.as_str())
        .bind(passenger_id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    row.map(|r| r.try_get(0)).transpose()
}
