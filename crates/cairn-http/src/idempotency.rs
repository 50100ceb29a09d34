//! `Idempotency-Key` on POST: a retried request gets the first response
//! again instead of running twice.
//!
//! [`IdempotencyStore`] keeps one row per `(tenant, key)` in
//! `cairn_idempotency_keys` (SQL over `sqlx::AnyPool`, the same statements on
//! SQLite and PostgreSQL; the table is created if missing, in the connection's
//! default schema, so on PostgreSQL the `search_path` picks it).
//! [`IdempotencyLayer`] applies it to every POST that carries the header:
//!
//! - The key is the header value, with one pair of surrounding double quotes
//!   removed (the IETF draft sends it as a structured-field string, Stripe-style
//!   clients send it bare; both name the same key). Empty, longer than 255
//!   bytes, not visible ASCII, or sent twice: 400 `invalid_input`.
//! - The request is identified by method, path with query, and the SHA-256 of
//!   the body. Keys are per tenant (from the [`RequestContext`] an earlier
//!   layer inserted; without one the layer answers 500).
//! - First use: the row is claimed (status 0, "in progress"), the handler runs,
//!   and the response is stored when it is worth replaying (see
//!   [`is_replayable`]): status, the headers `Content-Type`, `Location`,
//!   `ETag`, `X-Cairn-Position`, `Content-Location`, `Last-Modified`, and the
//!   body. Otherwise the claim is released, so a retry runs again. A request
//!   refused for its form before the handler ran (bad JSON, wrong content
//!   type, bad parameter: a response marked
//!   [`RequestRejected`](crate::RequestRejected)) is not stored either: the
//!   client fixes it and retries under the same key.
//! - Same key, same request, stored response: that response again, with
//!   `Idempotent-Replayed: true`; the handler does not run.
//! - Same key, different request: 422 `idempotency_key_reused`.
//! - Same key while the first request is still running: 409
//!   `concurrency_conflict` with `Retry-After: 1`, at once (no waiting: a
//!   waiting request holds a connection and a task for as long as the first
//!   one takes, and the client's retry gets the stored answer anyway).
//! - A claim whose request died without finishing (process killed) is taken
//!   over after [`IdempotencyOptions::in_progress_timeout`]; if the request's
//!   future is dropped (client gone) the claim is released at once.
//! - Entries older than [`IdempotencyOptions::ttl`] (24 h) count as absent and
//!   are removed by [`IdempotencyStore::purge_expired`].
//! - The store failing is 503 `unavailable` and the handler does not run:
//!   running it unprotected could apply a retried command twice.
//!
//! Other methods pass through untouched: PUT, PATCH and DELETE here are
//! idempotent by their `If-Match` preconditions.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use axum::{
    RequestExt,
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use cairn_core::{ErrorCode, RequestContext};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};
use tower::{Layer, Service};

use crate::{
    extract::too_large,
    position::POSITION_HEADER,
    problem::{ApiError, RequestRejected},
};

/// The request header naming the key.
pub const IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header marking a replayed response.
pub const IDEMPOTENT_REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Status stored while the first request runs.
const IN_PROGRESS: i64 = 0;

/// The response headers kept with a stored response.
const STORED_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::ETAG,
    POSITION_HEADER,
    header::CONTENT_LOCATION,
    header::LAST_MODIFIED,
];

const CREATE_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS cairn_idempotency_keys (
    tenant_id TEXT NOT NULL,
    "key" TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, "key")
)"#;

const CREATE_INDEX: &str = "CREATE INDEX IF NOT EXISTS cairn_idempotency_keys_created_at \
     ON cairn_idempotency_keys (created_at)";

/// How long entries live and what is stored.
#[derive(Debug, Clone)]
pub struct IdempotencyOptions {
    /// How long a stored response is replayed. Default 24 hours.
    pub ttl: Duration,
    /// After how long an unfinished claim (its process died) may be taken
    /// over by a new request with the same key. Default 60 seconds; keep it
    /// above the longest a POST handler can take.
    pub in_progress_timeout: Duration,
    /// Responses with larger bodies are passed on but not stored (a retry
    /// runs again). Default 1 MiB.
    pub max_stored_body_bytes: usize,
}

impl Default for IdempotencyOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 60 * 60),
            in_progress_timeout: Duration::from_secs(60),
            max_stored_body_bytes: 1024 * 1024,
        }
    }
}

/// The idempotency store failed.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The database failed or could not be reached.
    #[error("idempotency store: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored entry could not be read back.
    #[error("idempotency store: unreadable entry: {0}")]
    Corrupt(String),
}

impl IdempotencyError {
    /// The stable code: `unavailable` or `corrupt`.
    pub fn code(&self) -> ErrorCode {
        match self {
            IdempotencyError::Sql(_) => ErrorCode::Unavailable,
            IdempotencyError::Corrupt(_) => ErrorCode::Corrupt,
        }
    }
}

impl From<IdempotencyError> for ApiError {
    fn from(e: IdempotencyError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// Whether a response is stored for replay: 2xx, and 4xx except those that
/// describe a passing state rather than the request itself (401, 403, 408,
/// 409, 412, 425, 429: credentials, permissions, a concurrent change, a stale
/// version or a rate limit may differ on the retry). 5xx and everything else
/// is not stored, so the client can retry. Independently of the status, a
/// response marked [`RequestRejected`] is never stored.
pub fn is_replayable(status: StatusCode) -> bool {
    if status.is_success() {
        return true;
    }
    status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 408 | 409 | 412 | 425 | 429)
}

/// Stored responses to POSTs by `(tenant, Idempotency-Key)`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    pool: AnyPool,
    options: Arc<IdempotencyOptions>,
}

/// What identifies a request under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    method: String,
    path: String,
    request_hash: String,
}

/// A response as stored.
#[derive(Debug, Clone, PartialEq)]
struct StoredResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The outcome of claiming a key.
#[derive(Debug)]
enum Claim {
    /// This request owns the key; `token` (its claim time) proves it.
    Started { token: String },
    /// The key has a stored response for this same request.
    Replay(StoredResponse),
    /// The first request with the key is still running.
    InProgress,
    /// The key was used for another request.
    Mismatch,
}

impl IdempotencyStore {
    /// Opens the store on `pool`, creating the table if it is missing.
    /// (Install sqlx's `Any` drivers before building the pool.)
    pub async fn open(
        pool: AnyPool,
        options: IdempotencyOptions,
    ) -> Result<Self, IdempotencyError> {
        sqlx::query(CREATE_TABLE).execute(&pool).await?;
        sqlx::query(CREATE_INDEX).execute(&pool).await?;
        Ok(Self {
            pool,
            options: Arc::new(options),
        })
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &IdempotencyOptions {
        &self.options
    }

    /// The layer applying this store to POST requests.
    pub fn layer(&self) -> IdempotencyLayer {
        IdempotencyLayer {
            store: self.clone(),
        }
    }

    /// Deletes entries older than the TTL; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, IdempotencyError> {
        let cutoff = timestamp_ago(self.options.ttl);
        let done = sqlx::query("DELETE FROM cairn_idempotency_keys WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        request: &Fingerprint,
    ) -> Result<Claim, IdempotencyError> {
        // Bounded: each round either decides or observes a row that another
        // request changed between two statements.
        for _ in 0..4 {
            let token = timestamp_ago(Duration::ZERO);
            let inserted = sqlx::query(
                r#"INSERT INTO cairn_idempotency_keys
                   (tenant_id, "key", method, path, request_hash, status, headers, body, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, '[]', $7, $8)
                   ON CONFLICT (tenant_id, "key") DO NOTHING"#,
            )
            .bind(tenant)
            .bind(key)
            .bind(&request.method)
            .bind(&request.path)
            .bind(&request.request_hash)
            .bind(IN_PROGRESS)
            .bind(Vec::<u8>::new())
            .bind(&token)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(Claim::Started { token });
            }

            let row = sqlx::query(
                r#"SELECT method, path, request_hash, status, headers, body, created_at
                   FROM cairn_idempotency_keys WHERE tenant_id = $1 AND "key" = $2"#,
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { continue };
            let created_at: String = row.try_get("created_at")?;
            let status: i64 = row.try_get("status")?;
            let expired = created_at < timestamp_ago(self.options.ttl);
            let abandoned = status == IN_PROGRESS
                && created_at < timestamp_ago(self.options.in_progress_timeout);
            if expired || abandoned {
                if self
                    .take_over(tenant, key, request, &created_at, &token)
                    .await?
                {
                    return Ok(Claim::Started { token });
                }
                continue;
            }
            let stored = Fingerprint {
                method: row.try_get("method")?,
                path: row.try_get("path")?,
                request_hash: row.try_get("request_hash")?,
            };
            if stored != *request {
                return Ok(Claim::Mismatch);
            }
            if status == IN_PROGRESS {
                return Ok(Claim::InProgress);
            }
            let headers: String = row.try_get("headers")?;
            return Ok(Claim::Replay(StoredResponse {
                status: u16::try_from(status)
                    .map_err(|_| IdempotencyError::Corrupt(format!("status {status}")))?,
                headers: serde_json::from_str(&headers)
                    .map_err(|e| IdempotencyError::Corrupt(format!("headers: {e}")))?,
                body: row.try_get("body")?,
            }));
        }
        Err(IdempotencyError::Corrupt(
            "the entry kept changing while it was read".into(),
        ))
    }

    /// Replaces the expired or abandoned entry claimed at `seen` by a new
    /// claim; false if another request replaced it first.
    async fn take_over(
        &self,
        tenant: &str,
        key: &str,
        request: &Fingerprint,
        seen: &str,
        token: &str,
    ) -> Result<bool, IdempotencyError> {
        let done = sqlx::query(
            r#"UPDATE cairn_idempotency_keys
               SET method = $3, path = $4, request_hash = $5, status = $6, headers = '[]',
                   body = $7, created_at = $8
               WHERE tenant_id = $1 AND "key" = $2 AND created_at = $9"#,
        )
        .bind(tenant)
        .bind(key)
        .bind(&request.method)
        .bind(&request.path)
        .bind(&request.request_hash)
        .bind(IN_PROGRESS)
        .bind(Vec::<u8>::new())
        .bind(token)
        .bind(seen)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        token: &str,
        response: &StoredResponse,
    ) -> Result<(), IdempotencyError> {
        let headers = serde_json::to_string(&response.headers)
            .map_err(|e| IdempotencyError::Corrupt(e.to_string()))?;
        sqlx::query(
            r#"UPDATE cairn_idempotency_keys SET status = $3, headers = $4, body = $5
               WHERE tenant_id = $1 AND "key" = $2 AND status = $6 AND created_at = $7"#,
        )
        .bind(tenant)
        .bind(key)
        .bind(i64::from(response.status))
        .bind(headers)
        .bind(response.body.clone())
        .bind(IN_PROGRESS)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release(&self, tenant: &str, key: &str, token: &str) -> Result<(), IdempotencyError> {
        sqlx::query(
            r#"DELETE FROM cairn_idempotency_keys
               WHERE tenant_id = $1 AND "key" = $2 AND status = $3 AND created_at = $4"#,
        )
        .bind(tenant)
        .bind(key)
        .bind(IN_PROGRESS)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// UTC time `ago` before now, as fixed-width RFC 3339 with microseconds, so
/// that text order is time order on every database.
fn timestamp_ago(ago: Duration) -> String {
    let now = chrono::Utc::now();
    let then = chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    then.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The key of a request, if it has one; a bad one is a 400.
fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let reject = |why: &str| {
        ApiError::invalid_input(format!("Idempotency-Key {why}")).with_errors(vec![
            crate::FieldError::new(IDEMPOTENCY_KEY_HEADER.as_str(), why),
        ])
    };
    if values.next().is_some() {
        return Err(reject("must be sent once"));
    }
    let text = value
        .to_str()
        .map_err(|_| reject("must be visible ASCII"))?
        .trim();
    let key = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if key.is_empty() {
        return Err(reject("must not be empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(reject(&format!(
            "must be at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// Applies an [`IdempotencyStore`] to POST requests; see the module docs.
/// Install it inside the layer that inserts the [`RequestContext`].
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    store: IdempotencyStore,
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Debug, Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    store: IdempotencyStore,
}

impl<S> Service<Request> for IdempotencyService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let store = self.store.clone();
        Box::pin(async move {
            if req.method() != Method::POST {
                let mut inner = inner;
                return inner.call(req).await;
            }
            Ok(match run(store, inner, req).await {
                Ok(response) | Err(response) => response,
            })
        })
    }
}

/// The POST path; `Err` carries an error response made by the layer itself.
async fn run<S>(store: IdempotencyStore, mut inner: S, req: Request) -> Result<Response, Response>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let key = match key_of(req.headers()) {
        Ok(Some(key)) => key,
        Ok(None) => return Ok(inner.call(req).await.unwrap_or_else(|e| match e {})),
        Err(e) => return Err(e.into_response()),
    };
    let Some(tenant) = req
        .extensions()
        .get::<RequestContext>()
        .map(|ctx| ctx.tenant.as_str().to_owned())
    else {
        return Err(ApiError::internal(
            "idempotency layer without RequestContext: install the context layer outside it",
        )
        .into_response());
    };

    let (parts, body) = req.with_limited_body().into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if is_length_limit(&e) => return Err(too_large().into_response()),
        Err(e) => {
            return Err(
                ApiError::malformed(format!("the body could not be read: {e}")).into_response(),
            );
        }
    };
    let fingerprint = Fingerprint {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        request_hash: hex_sha256(&bytes),
    };
    let req = Request::from_parts(parts, Body::from(bytes));

    let token = match store.claim(&tenant, &key, &fingerprint).await {
        Err(e) => return Err(ApiError::from(e).into_response()),
        Ok(Claim::Mismatch) => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request",
            )
            .into_response());
        }
        Ok(Claim::InProgress) => {
            return Err(ApiError::new(
                ErrorCode::ConcurrencyConflict,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .into_response());
        }
        Ok(Claim::Replay(stored)) => return Ok(replay(stored)),
        Ok(Claim::Started { token }) => token,
    };

    let mut claim = ClaimGuard {
        store: store.clone(),
        tenant: tenant.clone(),
        key: key.clone(),
        token: Some(token),
    };
    let response = inner.call(req).await.unwrap_or_else(|e| match e {});
    if !is_replayable(response.status()) || response.extensions().get::<RequestRejected>().is_some()
    {
        claim.release().await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            // The handler's body failed mid-stream: nothing sensible to
            // store or send.
            claim.release().await;
            return Err(ApiError::internal(format!("response body failed: {e}")).into_response());
        }
    };
    if bytes.len() <= store.options.max_stored_body_bytes {
        let stored = StoredResponse {
            status: parts.status.as_u16(),
            headers: STORED_HEADERS
                .iter()
                .flat_map(|name| {
                    parts.headers.get_all(name).iter().filter_map(|v| {
                        v.to_str()
                            .ok()
                            .map(|v| (name.as_str().to_owned(), v.to_owned()))
                    })
                })
                .collect(),
            body: bytes.to_vec(),
        };
        let token = claim.token.take().unwrap_or_default();
        if let Err(e) = store.complete(&tenant, &key, &token, &stored).await {
            tracing::warn!(error = %e, "could not store an idempotent response; a retry will run again");
            claim.token = Some(token);
            claim.release().await;
        }
    } else {
        claim.release().await;
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Releases a claim that did not end in a stored response: awaited on the
/// normal path, spawned on drop (the request's future was dropped, e.g. the
/// client went away), so a retry is not blocked until the in-progress
/// timeout.
struct ClaimGuard {
    store: IdempotencyStore,
    tenant: String,
    key: String,
    token: Option<String>,
}

impl ClaimGuard {
    async fn release(&mut self) {
        if let Some(token) = self.token.take()
            && let Err(e) = self.store.release(&self.tenant, &self.key, &token).await
        {
            tracing::warn!(error = %e, "could not release an idempotency key; it frees itself after the in-progress timeout");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let tenant = std::mem::take(&mut self.tenant);
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move {
            if let Err(e) = store.release(&tenant, &key, &token).await {
                tracing::warn!(error = %e, "could not release an abandoned idempotency key");
            }
        });
    }
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimGuard")
            .field("key", &self.key)
            .finish()
    }
}

fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[&str]) -> Result<Option<String>, u16> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_str(v).unwrap());
        }
        key_of(&h).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn keys_are_taken_bare_or_quoted() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&["abc-123"]), Ok(Some("abc-123".into())));
        assert_eq!(key(&["\"abc-123\""]), Ok(Some("abc-123".into())));
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
        assert_eq!(key(&[&longest]), Ok(Some(longest.clone())));
    }

    #[test]
    fn bad_keys_are_400() {
        let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        for bad in [
            vec![""],
            vec!["\"\""],
            vec!["  "],
            vec![too_long.as_str()],
            vec!["a", "b"],
        ] {
            assert_eq!(key(&bad), Err(400), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(key_of(&h).unwrap_err().status.as_u16(), 400);
    }

    #[test]
    fn replayable_statuses() {
        for s in [200, 201, 202, 204, 400, 404, 410, 413, 415, 422] {
            assert!(is_replayable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [301, 401, 403, 408, 409, 412, 425, 429, 500, 502, 503, 504] {
            assert!(!is_replayable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn timestamps_sort_as_text_in_time_order() {
        let older = timestamp_ago(Duration::from_secs(90));
        let newer = timestamp_ago(Duration::ZERO);
        assert!(older < newer);
        assert_eq!(older.len(), newer.len());
        assert_eq!(newer.len(), "2026-01-01T00:00:00.000000Z".len());
        assert!(timestamp_ago(Duration::MAX) < older);
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
