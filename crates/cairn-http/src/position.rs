//! Read-your-writes over HTTP: a command's response says where its events
//! landed in `$all` (`X-Cairn-Position`), and a query can ask to be answered
//! only once the read model has caught up with that position
//! (`?minPosition=P`).
//!
//! The waiting belongs to the service (it knows which projection serves the
//! query); [`wait_for_position`] does it for a projection that publishes its
//! checkpoint on a `tokio::sync::watch` channel.
//!
//! A command's response is honest about its read model ([`Committed`]):
//! when the write committed but the read model did not show it within the
//! wait, the answer is `202 Accepted` with `Location`, `X-Cairn-Position`
//! and the command's result, and when that read model has stopped at a
//! poison event it is the `read_model_behind` problem (also 202, with
//! `committed: true`). Neither invites a resend, which without an
//! `Idempotency-Key` would write the command twice.

use std::time::Duration;

use axum::{
    Json,
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, IntoResponseParts, Response, ResponseParts},
};
use cairn_core::ErrorCode;
use cairn_projection::CatchUp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{extract::decode_query, problem::ApiError};

/// The header carrying a command's global position.
pub const POSITION_HEADER: HeaderName = HeaderName::from_static("x-cairn-position");

/// `X-Cairn-Position: <position>` as a response part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(pub u64);

impl IntoResponseParts for Position {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.headers_mut()
            .insert(POSITION_HEADER, HeaderValue::from(self.0));
        Ok(res)
    }
}

/// A committed write whose read model did not show it in time: what the
/// command's response says instead of the resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    /// The aggregate the command wrote (the resource's id).
    pub id: String,
    /// Its version after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The global position of the write: read with `?minPosition=` to see it.
    pub position: u64,
    /// Where the resource is read.
    pub location: String,
    /// `pending` (the read model is on its way) or `failed` (it stopped).
    pub read_model: String,
}

impl Committed {
    /// The response for a write at `position` whose read model `projection`
    /// stands at `catch_up` after the wait: `None` when it reached the
    /// write (answer with the resource as usual); 202 with this body when it
    /// is behind; the `read_model_behind` problem (202) when it failed.
    pub fn response(
        mut self,
        projection: &str,
        catch_up: CatchUp,
    ) -> Option<Result<Response, crate::ApiError>> {
        let location = HeaderValue::try_from(self.location.as_str()).ok();
        let position = self.position;
        match catch_up {
            CatchUp::Reached => None,
            CatchUp::Behind => {
                self.read_model = "pending".into();
                let mut response =
                    (StatusCode::ACCEPTED, Position(position), Json(self)).into_response();
                if let Some(location) = location {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                Some(Ok(response))
            }
            CatchUp::Failed => {
                let mut problem = crate::ApiError::new(
                    ErrorCode::ReadModelBehind,
                    format!(
                        "the write is committed at position {position}; the {projection} read model \
                         has stopped before it and does not show it yet (an operator can see why \
                         at /api/projections/{projection}); do not send the command again"
                    ),
                )
                .with_extension("committed", true)
                .with_extension("position", position)
                .with_extension("id", self.id)
                .with_extension("projection", projection.to_owned())
                .with_header(POSITION_HEADER, HeaderValue::from(position));
                if let Some(location) = location {
                    problem = problem.with_header(header::LOCATION, location);
                }
                Some(Err(problem))
            }
        }
    }
}

/// The `minPosition` query parameter (a `u64`), other parameters ignored.
/// Not a number: 400 `invalid_input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinPosition(pub Option<u64>);

#[derive(Debug, Deserialize)]
struct MinPositionQuery {
    #[serde(rename = "minPosition")]
    min_position: Option<u64>,
}

impl<S: Send + Sync> FromRequestParts<S> for MinPosition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query: MinPositionQuery =
            decode_query(parts.uri.query().unwrap_or_default()).map_err(ApiError::as_rejection)?;
        Ok(MinPosition(query.min_position))
    }
}

impl MinPosition {
    /// Waits until `checkpoint` reaches the requested position, at most
    /// `timeout`. No position requested: returns at once. Not reached in
    /// time (or the projection stopped): 504 `timeout`, with `minPosition`
    /// and the reached `position` as extension members.
    pub async fn wait(
        self,
        checkpoint: &watch::Receiver<u64>,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let Some(min) = self.0 else { return Ok(()) };
        wait_for_position(checkpoint, min, timeout)
            .await
            .map(drop)
            .map_err(|reached| {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!("the read model did not reach position {min} in time"),
                )
                .with_extension("minPosition", min)
                .with_extension("position", reached)
            })
    }
}

/// Waits until the value on `checkpoint` is at least `min`, at most
/// `timeout`: `Ok(reached)`, or `Err(last seen)` on timeout or when the
/// sender is gone.
pub async fn wait_for_position(
    checkpoint: &watch::Receiver<u64>,
    min: u64,
    timeout: Duration,
) -> Result<u64, u64> {
    let mut rx = checkpoint.clone();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= min))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|p| *p);
    reached.ok_or_else(|| *checkpoint.borrow())
}

/// The answer to `?minPosition=P` when no event has been written at `P`
/// (see `Projections::written`): 422 `validation_failed` at once, since no
/// wait would see it. A position a client holds comes from a committed
/// write, so this is a client's mistake, not a slow read model.
pub fn unwritten_position(min: u64) -> ApiError {
    ApiError::validation(
        format!("minPosition: no event has been written at position {min}"),
        vec![crate::FieldError::new(
            "minPosition",
            "no event has been written at this position; use a command's X-Cairn-Position",
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_the_checkpoint_reaches_the_position() {
        let (tx, rx) = watch::channel(3);
        assert_eq!(wait_for_position(&rx, 2, Duration::ZERO).await, Ok(3));
        let writer = tokio::spawn(async move {
            for p in 4..=10 {
                tx.send_replace(p);
                tokio::task::yield_now().await;
            }
            tx
        });
        assert_eq!(
            wait_for_position(&rx, 10, Duration::from_secs(30)).await,
            Ok(10)
        );
        drop(writer.await);
    }

    #[tokio::test]
    async fn gives_up_after_the_timeout_or_when_the_projection_stops() {
        let (tx, rx) = watch::channel(3);
        assert_eq!(
            wait_for_position(&rx, 5, Duration::from_millis(1)).await,
            Err(3)
        );
        let err = MinPosition(Some(5))
            .wait(&rx, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 504);
        assert_eq!(err.extensions["position"], 3);
        drop(tx);
        assert_eq!(
            wait_for_position(&rx, 5, Duration::from_secs(30)).await,
            Err(3)
        );
        assert!(MinPosition(None).wait(&rx, Duration::ZERO).await.is_ok());
    }

    fn committed() -> Committed {
        Committed {
            id: "f-1".into(),
            version: Some(3),
            position: 42,
            location: "/api/flights/f-1".into(),
            read_model: String::new(),
        }
    }

    #[tokio::test]
    async fn a_write_its_read_model_does_not_show_yet_is_accepted_not_failed() {
        assert!(committed().response("flights", CatchUp::Reached).is_none());

        let response = committed()
            .response("flights", CatchUp::Behind)
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::LOCATION], "/api/flights/f-1");
        assert_eq!(response.headers()[POSITION_HEADER], "42");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"id": "f-1", "version": 3, "position": 42,
                "location": "/api/flights/f-1", "readModel": "pending"})
        );

        let problem = committed()
            .response("flights", CatchUp::Failed)
            .unwrap()
            .unwrap_err();
        assert_eq!(problem.status, StatusCode::ACCEPTED);
        assert_eq!(problem.code, ErrorCode::ReadModelBehind);
        assert_eq!(problem.extensions["committed"], true);
        assert_eq!(problem.extensions["position"], 42);
        assert_eq!(problem.extensions["projection"], "flights");
        assert!(problem.detail.contains("do not send the command again"));
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::LOCATION], "/api/flights/f-1");
        assert_eq!(response.headers()[POSITION_HEADER], "42");
    }

    #[test]
    fn min_position_is_read_from_the_query() {
        let q: MinPositionQuery = decode_query("limit=5&minPosition=17").unwrap();
        assert_eq!(q.min_position, Some(17));
        let q: MinPositionQuery = decode_query("").unwrap();
        assert_eq!(q.min_position, None);
        let err = decode_query::<MinPositionQuery>("minPosition=-1").unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert_eq!(err.errors.unwrap()[0].field, "minPosition");
    }
}
