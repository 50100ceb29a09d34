//! What changes on a request and a response as they pass the gateway.
//!
//! Hop-by-hop headers belong to one connection and are dropped both ways
//! (RFC 9110 §7.6.1): `Connection` and every header it names,
//! `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`. The request also loses `Expect` (the gateway's own server has
//! answered it already), gets the upstream's `Host`, `X-Forwarded-For` with
//! the caller's address appended, `X-Forwarded-Proto` and
//! `X-Forwarded-Host` (what the caller asked for), and always an
//! `X-Correlation-Id`. Everything else, `Authorization`, `traceparent` and
//! `X-Cairn-Tenant` among it, passes untouched.
//!
//! One exception: a WebSocket upgrade ([`websocket_upgrade`]) keeps
//! `Connection: upgrade` and its `Upgrade` value, on the request and on the
//! upstream's 101, so that the two connections can be joined into a tunnel
//! (see `tunnel`). Only `websocket` is passed: it is the one upgrade the
//! gateway declares and knows how to carry (a byte tunnel after a 101).
//! Any other (`h2c`, TLS, a protocol of one's own) is dropped as before and
//! the request goes on as a plain one, so the gateway never joins
//! connections for a protocol nobody declared it would carry.

use std::{error::Error as StdError, fmt::Write as _, net::IpAddr};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use cairn_http::CORRELATION_ID_HEADER;
use http_body_util::LengthLimitError;

use crate::route::Upstream;

/// `X-Forwarded-For`: the addresses a request came through, oldest first.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the caller used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the caller asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Drops the hop-by-hop headers (see the module documentation).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// The `Upgrade` value when `headers` ask to switch to WebSocket (RFC 6455
/// §4.1): `Connection` names `upgrade` and the one `Upgrade` value is
/// `websocket`, both case-insensitive. `None` for anything else, other
/// protocols included.
pub(crate) fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    match (upgrades.next(), upgrades.next()) {
        (Some(upgrade), None)
            if connection_upgrade
                && upgrade
                    .to_str()
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")) =>
        {
            Some(upgrade.clone())
        }
        _ => None,
    }
}

/// Puts back the two headers of a WebSocket upgrade after
/// [`strip_hop_by_hop`]: `Connection: upgrade` and `Upgrade` as it came.
pub(crate) fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Turns the caller's request headers into the upstream's.
pub(crate) fn request_headers(
    headers: &mut HeaderMap,
    caller: Option<IpAddr>,
    asked_host: Option<HeaderValue>,
    upstream: &Upstream,
    correlation_id: &HeaderValue,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    if let Some(ip) = caller {
        let mut chain = String::new();
        for earlier in headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            chain.push_str(earlier);
            chain.push_str(", ");
        }
        let _ = write!(chain, "{ip}");
        // Built from visible ASCII and an IP address: always valid.
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = asked_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(header::HOST, upstream.host.clone());
    headers.insert(CORRELATION_ID_HEADER, correlation_id.clone());
}

/// Whether an upstream call failed because the request body passed the
/// gateway's limit while it was being sent.
pub(crate) fn body_too_large(err: &(dyn StdError + 'static)) -> bool {
    causes(err).any(|e| e.is::<LengthLimitError>())
}

/// An error and its causes, as one line for the log.
pub(crate) fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut text = String::new();
    for (i, e) in causes(err).enumerate() {
        if i > 0 {
            text.push_str(": ");
        }
        let _ = write!(text, "{e}");
    }
    text
}

fn causes<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Hop"),
            ("connection", "x-other-hop"),
            ("x-hop", "1"),
            ("x-other-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer t"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-cairn-tenant", "demo"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "traceparent", "x-cairn-tenant"]);
    }

    #[test]
    fn only_websocket_upgrades_are_recognised() {
        let upgrade = |pairs: &[(&str, &str)]| websocket_upgrade(&headers(pairs));
        assert_eq!(
            upgrade(&[("connection", "Upgrade"), ("upgrade", "websocket")]).unwrap(),
            "websocket"
        );
        assert_eq!(
            upgrade(&[
                ("connection", "keep-alive, UPGRADE"),
                ("upgrade", "WebSocket")
            ])
            .unwrap(),
            "WebSocket",
            "tokens are case-insensitive and the value is passed as it came"
        );
        for refused in [
            &[("upgrade", "websocket")][..],
            &[("connection", "close"), ("upgrade", "websocket")],
            &[("connection", "upgrade")],
            &[("connection", "upgrade"), ("upgrade", "h2c")],
            &[("connection", "upgrade"), ("upgrade", "websocket, h2c")],
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
            ],
        ] {
            assert_eq!(upgrade(refused), None, "{refused:?}");
        }

        let mut h = headers(&[
            ("connection", "Upgrade, x-hop"),
            ("x-hop", "1"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let kept = websocket_upgrade(&h).unwrap();
        strip_hop_by_hop(&mut h);
        keep_upgrade(&mut h, kept);
        let mut left: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "connection: upgrade",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "upgrade: WebSocket"
            ]
        );
    }

    #[test]
    fn forwarding_headers_are_set_and_the_chain_extended() {
        let upstream = Upstream {
            origin: "http://10.0.0.5:8081".into(),
            host: HeaderValue::from_static("10.0.0.5:8081"),
        };
        let mut h = headers(&[
            ("host", "api.example"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("expect", "100-continue"),
        ]);
        request_headers(
            &mut h,
            Some("127.0.0.1".parse().unwrap()),
            Some(HeaderValue::from_static("api.example")),
            &upstream,
            &HeaderValue::from_static("c-1"),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 198.51.100.1, 127.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(h["host"], "10.0.0.5:8081");
        assert_eq!(h["x-correlation-id"], "c-1");
        assert!(!h.contains_key("expect"));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_found_among_the_causes() {
        use http_body_util::{BodyExt as _, Full, Limited};
        #[derive(Debug)]
        struct Wrapper(Box<dyn StdError + Send + Sync>);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("sending the body")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&*self.0)
            }
        }
        let limited = Limited::new(Full::new(axum::body::Bytes::from_static(b"too long")), 1);
        let err = Wrapper(limited.collect().await.unwrap_err());
        assert!(body_too_large(&err));
        assert!(describe(&err).starts_with("sending the body: "));
        let other = Wrapper("connection reset".into());
        assert!(!body_too_large(&other));
    }
}
