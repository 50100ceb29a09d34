//! Identity wiring shared by the commands that serve the API: the master
//! key, the trusted issuers, and the record of cross-tenant reads in a
//! store. What each command and query needs is declared next to its type
//! (`ACCESS`), and checked by the buses (`crate::platform::buses`).

use std::{future::Future, path::Path, pin::Pin, sync::Arc};

use anyhow::{Context as _, bail};
use cairn_auth::{MasterKey, RemoteJwks, TrustedIssuer};
use cairn_core::{EventId, Metadata, NewEvent, StreamId, TenantId};
use cairn_http::{CROSS_TENANT_READ, CrossTenantAudit, CrossTenantRead, cross_read_data};
use cairn_store::{EventStore, ExpectedVersion};

/// Identity options of `cairn up` (and, later, of each service).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct IdentityArgs {
    /// File holding the master key that seals signing keys (32 bytes,
    /// base64url). Default: `CAIRN_MASTER_KEY` if set, else
    /// `<data-dir>/master.key`, created on first start.
    #[arg(long, env = "CAIRN_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<std::path::PathBuf>,
    /// The public URL tokens name as issuer (`<url>/realms/<tenant>`).
    /// Default: `http://<listen address>`.
    #[arg(long, env = "CAIRN_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
    /// Trust an external OIDC issuer for one tenant, e.g. a Keycloak realm:
    /// `tenant=acme,issuer=https://kc.example/realms/acme[,jwks=URL][,audience=A][,alg=RS256]`.
    /// Keys come from `jwks`, else from the issuer's discovery document.
    /// Repeatable.
    #[arg(long = "trust-issuer", value_name = "SPEC")]
    pub(crate) trust_issuer: Vec<String>,
}

/// The master key: `--master-key-file`, `CAIRN_MASTER_KEY`, or
/// `<dir>/master.key` (created when missing); `None` dir means ephemeral.
pub(crate) fn master_key(
    args: &IdentityArgs,
    dir: Option<&Path>,
) -> anyhow::Result<(MasterKey, String)> {
    if let Some(path) = &args.master_key_file {
        let key = MasterKey::from_file(path)?;
        return Ok((key, path.display().to_string()));
    }
    if let Ok(text) = std::env::var("CAIRN_MASTER_KEY") {
        let key = MasterKey::from_text(&text).context("CAIRN_MASTER_KEY")?;
        return Ok((key, "CAIRN_MASTER_KEY".into()));
    }
    match dir {
        Some(dir) => {
            let path = dir.join("master.key");
            let (key, created) = MasterKey::load_or_create(&path)?;
            let what = if created {
                format!("{} (created)", path.display())
            } else {
                path.display().to_string()
            };
            Ok((key, what))
        }
        None => Ok((MasterKey::generate()?, "in memory (ephemeral)".into())),
    }
}

/// Parses the `--trust-issuer` specs.
pub(crate) fn trusted_issuers(specs: &[String]) -> anyhow::Result<Vec<TrustedIssuer>> {
    specs.iter().map(|s| trusted_issuer(s)).collect()
}

fn trusted_issuer(spec: &str) -> anyhow::Result<TrustedIssuer> {
    let (mut tenant, mut issuer, mut jwks) = (None, None, None);
    let (mut audiences, mut algorithms) = (Vec::new(), Vec::new());
    for part in spec.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            bail!("--trust-issuer {spec}: `{part}` is not key=value");
        };
        match key.trim() {
            "tenant" => tenant = Some(TenantId::new(value.trim())?),
            "issuer" => issuer = Some(value.trim().to_owned()),
            "jwks" => jwks = Some(value.trim().to_owned()),
            "audience" => audiences.push(value.trim().to_owned()),
            "alg" => algorithms.push(
                value
                    .trim()
                    .parse::<cairn_auth::Algorithm>()
                    .map_err(|_| anyhow::anyhow!("--trust-issuer {spec}: unknown alg {value}"))?,
            ),
            other => bail!("--trust-issuer {spec}: unknown key {other}"),
        }
    }
    let (Some(tenant), Some(issuer)) = (tenant, issuer) else {
        bail!("--trust-issuer {spec}: tenant= and issuer= are required");
    };
    let mut trusted = TrustedIssuer::external(issuer, tenant).with_audiences(audiences);
    if let Some(url) = jwks {
        trusted = trusted.with_keys(Arc::new(RemoteJwks::url(url)));
    }
    if !algorithms.is_empty() {
        trusted = trusted.with_algorithms(algorithms);
    }
    Ok(trusted)
}

/// Records each cross-tenant read as a `CrossTenantRead` event in the read
/// tenant's stream `<category>-<reader's tenant>` (`crossread` in one
/// process; `crossread_<service>` for a service on its own, which
/// publishes the category so the audit service hears it), so it shows in
/// that tenant's audit log.
pub(crate) struct StoreAudit(pub(crate) Arc<dyn EventStore>, pub(crate) String);

impl std::fmt::Debug for StoreAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreAudit")
    }
}

impl CrossTenantAudit for StoreAudit {
    fn record(
        &self,
        read: CrossTenantRead,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let stream =
                StreamId::for_aggregate(&self.1, &read.actor_tenant).map_err(|e| e.to_string())?;
            let event = NewEvent::new(CROSS_TENANT_READ, cross_read_data(&read))
                .with_id(EventId::new())
                .with_metadata(Metadata {
                    correlation_id: Some(read.correlation_id),
                    actor: Some(read.actor),
                    ..Metadata::default()
                });
            self.0
                .append(&read.tenant, &stream, ExpectedVersion::Any, vec![event])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_specs_parse_or_say_what_is_wrong() {
        let t = trusted_issuer(
            "tenant=acme,issuer=https://kc.test/realms/acme,jwks=http://127.0.0.1:1/jwks,audience=account,alg=RS256",
        )
        .unwrap();
        assert_eq!(t.audiences, vec!["account".to_owned()]);
        assert_eq!(t.algorithms, vec![cairn_auth::Algorithm::RS256]);
        for bad in [
            "issuer=https://x",
            "tenant=acme",
            "tenant=acme,issuer=x,colour=blue",
            "tenant=Not Valid,issuer=x",
            "tenant=acme,issuer=x,alg=XX999",
            "nonsense",
        ] {
            assert!(trusted_issuer(bad).is_err(), "{bad}");
        }
        // HMAC can never be allowed.
        let t = trusted_issuer("tenant=acme,issuer=x,alg=HS256").unwrap();
        assert!(t.algorithms.is_empty());
    }
}
