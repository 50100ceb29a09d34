//! WebSocket tunnels: once an upstream has answered a WebSocket upgrade
//! with 101 and the gateway has passed that 101 on, the caller's connection
//! and the upstream's are joined, and bytes are copied both ways until
//! either side closes.
//!
//! The gateway does not read the frames: what the two ends negotiated
//! (subprotocol, extensions, compression) is theirs. The upstream timeout
//! only bounds the wait for the 101 head, and the body limit only the
//! request body (a WebSocket request has none): a tunnel lives as long as
//! its two ends keep it open. A caller that stops sending closes its side,
//! which closes the upstream's, and the other way round. Open tunnels are
//! counted by route (`cairn_gateway_tunnels`).

use cairn_telemetry::names;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::forward::describe;

/// Joins `caller` and `upstream` when both have switched protocols, in a
/// task of its own (the handler has to return the 101 for the caller's
/// side to switch). `route` names the route in the log; nothing of the
/// request (path, query, headers, tokens) is logged.
pub(crate) fn spawn(caller: OnUpgrade, upstream: OnUpgrade, route: String) {
    tokio::spawn(async move {
        let (caller, upstream) = match tokio::try_join!(caller, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::warn!(route, error = %describe(&e), "a WebSocket upgrade did not complete");
                return;
            }
        };
        tracing::debug!(route, "WebSocket tunnel open");
        let open = metrics::gauge!(names::GATEWAY_TUNNELS, "route" => route.clone());
        open.increment(1.0);
        let (mut caller, mut upstream) = (TokioIo::new(caller), TokioIo::new(upstream));
        let copied = tokio::io::copy_bidirectional(&mut caller, &mut upstream).await;
        open.decrement(1.0);
        match copied {
            Ok((sent, received)) => {
                tracing::debug!(route, sent, received, "WebSocket tunnel closed");
            }
            // A side that goes away without closing (a reset) is a normal
            // end for a tunnel, not the gateway's failure.
            Err(e) => tracing::debug!(route, error = %e, "WebSocket tunnel closed"),
        }
    });
}
