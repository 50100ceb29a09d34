//! The gateway's `GET /openapi.json`: one OpenAPI document for the API the
//! gateway serves, merged from its upstreams' own documents.
//!
//! For each route the gateway asks one upstream for its `/openapi.json`,
//! the next one when it cannot be reached or answers anything but an
//! OpenAPI document, and never the same upstream twice (one that serves
//! several routes is asked once). Of each document it keeps only the paths
//! the gateway routes to that route, so a path an upstream serves but the
//! gateway does not is never advertised, plus the `/api/projections` paths
//! (which the gateway composes itself, see `crate::projections`); the
//! gateway's own health and metrics come from `cairn-http`'s common part.
//! Paths and components are merged by `cairn_http::openapi_document`, the
//! one merge every Cairn process uses.
//!
//! The merged document is kept for [`OPENAPI_CACHE`], so a burst of
//! requests asks the upstreams once; a failure is kept for a second. When
//! no upstream gives a document the answer is 503 `unavailable`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};
use cairn_core::ErrorCode;
use cairn_http::{ApiError, openapi_document};
use serde_json::Value;
use tokio::sync::Mutex;
use utoipa::openapi::OpenApi;

use crate::{
    compose::fetch,
    gateway::HttpClient,
    projections::is_projections_path,
    route::{RouteTable, Target, Upstream, prefix_matches},
};

/// How long a merged document is served before the upstreams are asked
/// again.
pub const OPENAPI_CACHE: Duration = Duration::from_secs(10);

/// How long "no upstream gave a document" is kept.
const FAILURE_CACHE: Duration = Duration::from_secs(1);

/// How long one upstream has to send its whole document.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// The largest upstream document read.
const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// The last merged document (or failure) and when it was made.
#[derive(Debug, Default)]
pub(crate) struct OpenApiCache {
    // Held while the upstreams are asked, so concurrent requests wait for
    // that one round instead of starting their own.
    slot: Mutex<Option<(Instant, Option<Bytes>)>>,
}

impl OpenApiCache {
    /// `GET /openapi.json`.
    pub(crate) async fn serve(&self, table: &RouteTable, client: &HttpClient) -> Response {
        let mut slot = self.slot.lock().await;
        let fresh = slot.as_ref().is_some_and(|(made, doc)| {
            made.elapsed()
                < if doc.is_some() {
                    OPENAPI_CACHE
                } else {
                    FAILURE_CACHE
                }
        });
        if !fresh {
            let doc = merged(table, client)
                .await
                .and_then(|doc| serde_json::to_vec(&doc).ok())
                .map(Bytes::from);
            *slot = Some((Instant::now(), doc));
        }
        match slot.as_ref().and_then(|(_, doc)| doc.clone()) {
            Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            None => ApiError::new(
                ErrorCode::Unavailable,
                "no upstream gave its OpenAPI document",
            )
            .into_response(),
        }
    }
}

/// The merged document, or `None` when no upstream gave one.
async fn merged(table: &RouteTable, client: &HttpClient) -> Option<OpenApi> {
    let targets = table.targets();
    // By upstream origin: its document, or `None` when it gave none.
    let mut asked: HashMap<&str, Option<OpenApi>> = HashMap::new();
    let mut chosen: Vec<Option<&str>> = vec![None; targets.len()];
    let rounds = targets.iter().map(|t| t.upstreams.len()).max().unwrap_or(0);
    for round in 0..rounds {
        // This round's candidate of each route still without a document,
        // each upstream asked at most once.
        let mut wanted: Vec<&Upstream> = Vec::new();
        for (target, choice) in targets.iter().zip(&chosen) {
            if choice.is_some() {
                continue;
            }
            if let Some(upstream) = target.upstreams.get(round)
                && !asked.contains_key(upstream.origin.as_str())
                && wanted.iter().all(|u| u.origin != upstream.origin)
            {
                wanted.push(upstream);
            }
        }
        let answers = futures_util::future::join_all(wanted.iter().map(|upstream| async move {
            let doc = match fetch(
                client,
                upstream,
                Method::GET,
                "/openapi.json",
                HeaderMap::new(),
                FETCH_DEADLINE,
                MAX_DOCUMENT_BYTES,
            )
            .await
            {
                Ok(answer) if answer.status.is_success() => read_document(&answer.body),
                Ok(answer) => Err(format!("answered {}", answer.status)),
                Err(e) => Err(e),
            };
            match doc {
                Ok(doc) => Some(doc),
                Err(e) => {
                    tracing::warn!(
                        upstream = %upstream.origin,
                        error = %e,
                        "no OpenAPI document from an upstream"
                    );
                    None
                }
            }
        }))
        .await;
        for (upstream, doc) in wanted.iter().zip(answers) {
            asked.insert(upstream.origin.as_str(), doc);
        }
        for (target, choice) in targets.iter().zip(chosen.iter_mut()) {
            if choice.is_none()
                && let Some(upstream) = target.upstreams.get(round)
                && asked
                    .get(upstream.origin.as_str())
                    .is_some_and(Option::is_some)
            {
                *choice = Some(upstream.origin.as_str());
            }
        }
        if chosen.iter().all(Option::is_some) {
            break;
        }
    }
    if asked.values().all(Option::is_none) {
        return None;
    }

    let mut docs = Vec::new();
    for (target, choice) in targets.iter().zip(&chosen) {
        if let Some(doc) = choice
            .and_then(|origin| asked.get(origin))
            .and_then(Option::as_ref)
        {
            let mut doc = doc.clone();
            doc.paths
                .paths
                .retain(|path, _| !is_own_path(path) && routed_to(table, path, target));
            docs.push(doc);
        }
    }
    // The projections endpoints are the gateway's composition of every
    // upstream's: described by whichever documents have them.
    for upstream in table.distinct_upstreams() {
        if let Some(Some(mut doc)) = asked.remove(upstream.origin.as_str()) {
            doc.paths.paths.retain(|path, _| is_projections_path(path));
            docs.push(doc);
        }
    }
    Some(openapi_document(
        "Cairn (gateway)",
        env!("CARGO_PKG_VERSION"),
        docs,
    ))
}

/// An upstream's document, as utoipa's types so that it merges like every
/// other ([`openapi_document`]).
fn read_document(body: &[u8]) -> Result<OpenApi, String> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if !doc.get("openapi").is_some_and(Value::is_string) {
        return Err("not an OpenAPI document: no `openapi` version".into());
    }
    mark_untyped_schemas(&mut doc);
    serde_json::from_value(doc).map_err(|e| format!("not an OpenAPI document: {e}"))
}

/// utoipa writes a schema that takes any value (`serde_json::Value`'s)
/// without a `type`, and cannot read one back: it wants a `type`, a `$ref`
/// or a composition. Such schemas are given `"type": null`, which utoipa
/// reads as exactly that schema (and writes without a `type` again). Only
/// schema positions are visited, never examples.
fn mark_untyped_schemas(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match key.as_str() {
                    "example" | "examples" => {}
                    "schema" => mark_schema(inner),
                    "schemas" => {
                        if let Value::Object(schemas) = inner {
                            schemas.values_mut().for_each(mark_schema);
                        }
                    }
                    _ => mark_untyped_schemas(inner),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mark_untyped_schemas),
        _ => {}
    }
}

fn mark_schema(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    if !["type", "$ref", "oneOf", "anyOf", "allOf"]
        .iter()
        .any(|k| map.contains_key(*k))
    {
        map.insert("type".into(), Value::Null);
    }
    for (key, inner) in map.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "dependentSchemas" => {
                if let Value::Object(schemas) = inner {
                    schemas.values_mut().for_each(mark_schema);
                }
            }
            "oneOf" | "anyOf" | "allOf" | "prefixItems" => {
                if let Value::Array(schemas) = inner {
                    schemas.iter_mut().for_each(mark_schema);
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "propertyNames"
            | "if"
            | "then"
            | "else"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "contentSchema" => mark_schema(inner),
            _ => {}
        }
    }
}

/// Whether the gateway routes `path` to `target` (and not to a longer
/// prefix's route).
fn routed_to(table: &RouteTable, path: &str, target: &Target) -> bool {
    table
        .find(path)
        .is_some_and(|found| std::ptr::eq(found, target))
}

/// The gateway's own endpoints, never an upstream's: health, metrics, this
/// document, and the composed projections (added apart).
fn is_own_path(path: &str) -> bool {
    prefix_matches("/health", path)
        || path == "/metrics"
        || path == "/openapi.json"
        || is_projections_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_with_schemas_of_any_value_are_read_and_written_back_unchanged() {
        let any = serde_json::json!({"description": "anything"});
        let doc = serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {"/things/{id}": {"get": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {}}],
                "responses": {"200": {
                    "description": "ok",
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Thing"},
                        "example": {"schema": {}, "data": {}}
                    }}
                }}
            }}},
            "components": {"schemas": {
                "Thing": {
                    "type": "object",
                    "properties": {
                        "data": {},
                        "metadata": any,
                        "list": {"type": "array", "items": {}},
                        "map": {"type": "object", "additionalProperties": {}},
                        "either": {"oneOf": [{}, {"type": "string"}]}
                    }
                },
                "Free": {}
            }}
        });
        let read = read_document(doc.to_string().as_bytes()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), doc);
    }

    #[test]
    fn anything_else_is_refused() {
        for body in [&b"<html>"[..], b"{\"upstream\": \"x\"}", b"[]"] {
            assert!(read_document(body).is_err());
        }
    }
}
