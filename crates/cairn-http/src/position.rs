//! Read-your-writes over HTTP: a command's response says where its events
//! landed in `$all` (`X-Cairn-Position`), and a query can ask to be answered
//! only once the read model has caught up with that position
//! (`?minPosition=P`).
//!
//! The waiting belongs to the service (it knows which projection serves the
//! query); [`wait_for_position`] does it for a projection that publishes its
//! checkpoint on a `tokio::sync::watch` channel.

use std::time::Duration;

use axum::{
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, request::Parts},
    response::{IntoResponseParts, ResponseParts},
};
use cairn_core::ErrorCode;
use serde::Deserialize;
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
