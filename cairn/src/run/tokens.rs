//! How a service or the gateway on its own checks tokens: the realms' keys
//! fetched over HTTP, the other trusted issuers, and the revoked-token list
//! kept in its own database from the identity service's events.

use std::sync::Arc;

use anyhow::Context as _;
use cairn_auth::{RemoteJwks, Revocations, RoleMap, TrustedIssuer, Verifier, VerifierOptions};
use cairn_identity::revocations::{self, RevokedTokens};
use cairn_service::Background;
use cairn_service_db::ServiceDb;

use super::link::Link;

/// The revoked-token list of `service`, kept in `db` from the identity
/// service's events, and the components that keep it: the consumer that
/// writes them there, and the reader of what other instances wrote.
pub(crate) async fn hear_revocations(
    service: &str,
    db: &ServiceDb,
    link: &Link,
) -> anyhow::Result<(RevokedTokens, Vec<Box<dyn Background>>)> {
    let revoked = RevokedTokens::open(db.clone())
        .await
        .context("opening the revoked-token list")?;
    let consumer = revoked
        .consumer(service, link.broker.clone())
        .start()
        .await
        .context("consuming revocations")?;
    let fresh = revoked.keep_fresh(revocations::DEFAULT_POLL);
    Ok((revoked, vec![Box::new(consumer), Box::new(fresh)]))
}

/// The verifier of a service or the gateway on its own: Cairn's realms
/// under `issuer` (keys over HTTP, from `identity_url` when given) and the
/// other trusted issuers, refusing what `revoked` lists (every service
/// keeps one; the gateway when it has a database and a broker).
pub(crate) fn remote_verifier(
    issuer: &Option<String>,
    identity_url: &Option<String>,
    mut trusted: Vec<TrustedIssuer>,
    revoked: Option<Arc<dyn Revocations>>,
) -> Verifier {
    if let Some(issuer) = issuer {
        let fetch = identity_url.clone().unwrap_or_else(|| issuer.clone());
        trusted.insert(
            0,
            TrustedIssuer::cairn(
                issuer.clone(),
                Arc::new(RemoteJwks::realms(issuer.clone(), fetch)),
            ),
        );
    }
    Verifier::with_options(
        trusted,
        RoleMap::default(),
        VerifierOptions::default(),
        revoked,
    )
}
