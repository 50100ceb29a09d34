//! Whole answers from upstreams, for the endpoints the gateway composes
//! from several of them (`/openapi.json`, `/api/projections`) rather than
//! proxies: one small request, the response read whole under a size limit
//! and a deadline, and a response built back from it unchanged.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::Response,
};
use cairn_http::{CORRELATION_ID_HEADER, TENANT_HEADER, TRACEPARENT_HEADER};
use http_body_util::{BodyExt as _, Limited};

use crate::{
    forward::{describe, strip_hop_by_hop},
    gateway::HttpClient,
    route::Upstream,
};

/// An upstream's answer, read whole.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Fetched {
    /// The answer as the caller gets it: status, end-to-end headers and
    /// body as the upstream sent them.
    pub(crate) fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let mut headers = self.headers;
        strip_hop_by_hop(&mut headers);
        // The body is whole now: its length is what the server says.
        headers.remove(header::CONTENT_LENGTH);
        *response.headers_mut() = headers;
        response
    }
}

/// What a composed request carries of the caller's: who they are
/// (`Authorization`), the tenant they name, their trace, and the
/// correlation id the gateway uses for the whole exchange.
pub(crate) fn caller_headers(caller: &HeaderMap, correlation_id: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [header::AUTHORIZATION, TENANT_HEADER, TRACEPARENT_HEADER] {
        for value in caller.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(CORRELATION_ID_HEADER, correlation_id.clone());
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers
}

/// `method path_and_query` on `upstream` with `headers` and no body; the
/// response must arrive whole within `deadline` and be at most `limit`
/// bytes. The error is one line for the log.
pub(crate) async fn fetch(
    client: &HttpClient,
    upstream: &Upstream,
    method: Method,
    path_and_query: &str,
    mut headers: HeaderMap,
    deadline: Duration,
    limit: usize,
) -> Result<Fetched, String> {
    let uri =
        Uri::try_from(format!("{}{path_and_query}", upstream.origin)).map_err(|e| e.to_string())?;
    headers.insert(header::HOST, upstream.host.clone());
    let mut request = axum::http::Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let call = async {
        let response = client.request(request).await.map_err(|e| describe(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| format!("no whole answer within {} ms", deadline.as_millis()))?
}
