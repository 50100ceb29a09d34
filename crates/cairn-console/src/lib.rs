//! The web console: a few static files, embedded in the binary when it is
//! built (no Node toolchain is needed to build Cairn), served at `/` and
//! `/console/…`.
//!
//! The pages are plain HTML, CSS and JavaScript with no build step. Live
//! data comes over `/ws` through `resclient` (vendored unchanged in
//! `assets/vendor/`, with its licence); writes go to the HTTP API, so a
//! refusal shows the problem+json's detail. The token lives in the
//! browser's session storage and is sent as a bearer token, never in a URL.

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../assets/", $path)),
        }
    };
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Everything under `/console/`.
const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("vendor/resclient.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/resclient.LICENSE", "text/plain; charset=utf-8"),
];

/// What the console's pages may load and reach: themselves, and the
/// same origin's HTTP API and WebSocket.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /` and `GET /console/{file}`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { serve(&INDEX) }))
        .route("/console/{*file}", get(file))
}

async fn file(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == file) {
        Some(asset) => serve(asset),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; a browser asks again each time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let response = router()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body.to_vec())
    }

    #[tokio::test]
    async fn serves_the_pages_and_their_files() {
        let (status, content_type, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
        let index = String::from_utf8(body).unwrap();
        // Every file the page loads is one that is served.
        for src in [
            "/console/app.js",
            "/console/style.css",
            "/console/vendor/resclient.min.js",
        ] {
            assert!(index.contains(src), "index.html loads {src}");
            let (status, _, body) = get(src).await;
            assert_eq!(status, StatusCode::OK, "{src}");
            assert!(!body.is_empty());
        }
        let (_, _, licence) = get("/console/vendor/resclient.LICENSE").await;
        assert!(String::from_utf8(licence).unwrap().contains("MIT License"));
    }

    #[tokio::test]
    async fn unknown_files_are_not_found() {
        for path in [
            "/console/nope.js",
            "/console/../Cargo.toml",
            "/console/vendor/",
        ] {
            assert_eq!(get(path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
    }
}
