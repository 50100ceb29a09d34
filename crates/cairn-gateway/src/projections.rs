//! `/api/projections` at the gateway: the projections of every service
//! behind it, as one API.
//!
//! Each service serves the projections it runs (`cairn-http`'s admin API:
//! `GET /api/projections`, `GET /api/projections/{name}` and the operator's
//! actions under it). The gateway composes them and never invents an
//! answer:
//! - `GET /api/projections` asks every distinct upstream at once, with the
//!   caller's `Authorization`, `X-Cairn-Tenant`, `traceparent` and the
//!   correlation id, and answers the concatenation of the arrays of those
//!   that answer 200 (a projection that several replicas of one service
//!   report is listed once, the first upstream's). When none answers 200,
//!   an upstream's 403, else its 401, is passed through as it came; when
//!   every upstream answers 404 (none runs projections) the list is empty;
//!   otherwise 502 `unavailable`.
//! - `/api/projections/{name}` and everything under it go to the upstream
//!   that owns `{name}`: the first that answers 200 to `GET
//!   /api/projections/{name}`, asked of all at once. The request is then
//!   forwarded to it like any proxied request (a plain `GET` of the status
//!   is answered with that very response). No owner: the refusal passed
//!   through as above, 404 `not_found` when every upstream says it does not
//!   know the name, else 502.
//!
//! The token is checked at the edge before any of this, as on every path
//! that is not public.

use std::collections::HashSet;

use axum::{
    Json,
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use cairn_core::ErrorCode;
use cairn_http::ApiError;
use serde_json::Value;

use crate::{
    compose::{Fetched, caller_headers, fetch},
    gateway::Inner,
    route::{Upstream, prefix_matches},
};

/// Where the projections API lives.
pub const PROJECTIONS_PREFIX: &str = "/api/projections";

/// The largest answer read from one upstream.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Whether `path` is the projections API (on a segment boundary).
pub(crate) fn is_projections_path(path: &str) -> bool {
    prefix_matches(PROJECTIONS_PREFIX, path)
}

/// What the upstreams said to one `GET` asked of all of them.
struct Answers {
    /// Those that answered 200 with a usable body, in upstream order.
    ok: Vec<(Upstream, Fetched)>,
    /// The refusal to pass on when none did: a 403 before a 401.
    refusal: Option<Fetched>,
    /// Every upstream answered 404.
    all_not_found: bool,
}

impl Inner {
    /// Every request under [`PROJECTIONS_PREFIX`], once the token has
    /// passed.
    pub(crate) async fn projections(&self, req: Request, correlation_id: &HeaderValue) -> Response {
        let caller = caller_headers(req.headers(), correlation_id);
        let path = req.uri().path();
        let rest = path[PROJECTIONS_PREFIX.len()..].trim_start_matches('/');
        if rest.is_empty() {
            if req.method() != Method::GET {
                return ApiError::malformed(format!(
                    "method {} is not allowed on this resource",
                    req.method()
                ))
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
                .with_header(header::ALLOW, HeaderValue::from_static("GET"))
                .into_response();
            }
            let path_and_query = req.uri().path_and_query().map_or(path, |p| p.as_str());
            return self.list(path_and_query, caller).await;
        }
        let (name, below) = rest.split_once('/').unwrap_or((rest, ""));
        let answers = self
            .ask_all(&format!("{PROJECTIONS_PREFIX}/{name}"), caller, |_| true)
            .await;
        let Some((owner, status)) = answers.ok.into_iter().next() else {
            return match answers.refusal {
                Some(refusal) => refusal.into_response(),
                None if answers.all_not_found => ApiError::not_found(format!(
                    "no service behind the gateway has a projection named `{name}`"
                ))
                .into_response(),
                None => unavailable(),
            };
        };
        if below.is_empty() && req.method() == Method::GET && req.uri().query().is_none() {
            return status.into_response();
        }
        self.forward_to(&owner, PROJECTIONS_PREFIX, req, correlation_id)
            .await
    }

    /// `GET /api/projections`: every upstream's list, concatenated.
    async fn list(&self, path_and_query: &str, caller: HeaderMap) -> Response {
        let answers = self
            .ask_all(path_and_query, caller, |answer| {
                serde_json::from_slice::<Vec<Value>>(&answer.body).is_ok()
            })
            .await;
        if answers.ok.is_empty() {
            return match answers.refusal {
                Some(refusal) => refusal.into_response(),
                None if answers.all_not_found => Json(Vec::<Value>::new()).into_response(),
                None => unavailable(),
            };
        }
        let mut names = HashSet::new();
        let mut items = Vec::new();
        for (_, answer) in answers.ok {
            let list: Vec<Value> = serde_json::from_slice(&answer.body).unwrap_or_default();
            for item in list {
                let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
                if name.is_none_or(|name| names.insert(name)) {
                    items.push(item);
                }
            }
        }
        Json(items).into_response()
    }

    /// `GET path_and_query` of every distinct upstream at once; a 200 counts
    /// when `usable` says its body is what was asked for.
    async fn ask_all(
        &self,
        path_and_query: &str,
        caller: HeaderMap,
        usable: impl Fn(&Fetched) -> bool,
    ) -> Answers {
        let upstreams = self.table.distinct_upstreams();
        let answers = futures_util::future::join_all(upstreams.iter().map(|upstream| {
            fetch(
                &self.client,
                upstream,
                Method::GET,
                path_and_query,
                caller.clone(),
                self.upstream_timeout,
                MAX_ANSWER_BYTES,
            )
        }))
        .await;
        let mut out = Answers {
            ok: Vec::new(),
            refusal: None,
            all_not_found: true,
        };
        for (upstream, answer) in upstreams.into_iter().zip(answers) {
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(
                        upstream = %upstream.origin,
                        error = %e,
                        "no answer to {PROJECTIONS_PREFIX}"
                    );
                    out.all_not_found = false;
                    continue;
                }
            };
            match answer.status {
                StatusCode::NOT_FOUND => {}
                StatusCode::OK if usable(&answer) => out.ok.push((upstream.clone(), answer)),
                StatusCode::FORBIDDEN => {
                    out.all_not_found = false;
                    if out
                        .refusal
                        .as_ref()
                        .is_none_or(|r| r.status != StatusCode::FORBIDDEN)
                    {
                        out.refusal = Some(answer);
                    }
                }
                StatusCode::UNAUTHORIZED => {
                    out.all_not_found = false;
                    out.refusal.get_or_insert(answer);
                }
                status => {
                    tracing::warn!(
                        upstream = %upstream.origin,
                        %status,
                        "unusable answer to {PROJECTIONS_PREFIX}"
                    );
                    out.all_not_found = false;
                }
            }
        }
        out
    }
}

fn unavailable() -> Response {
    ApiError::new(
        ErrorCode::Unavailable,
        "no service behind the gateway answered for its projections",
    )
    .with_status(StatusCode::BAD_GATEWAY)
    .into_response()
}
