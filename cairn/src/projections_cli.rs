//! `cairn projections …`: an operator's hands on the projections of a
//! running system, through its admin API (`/api/projections`, see
//! `cairn_http::projections_router`), with a token like any other client:
//! list and status, retry, skip the event a projection stopped at,
//! rebuild, and the events it passed over. Also where the poison-event
//! policy flags (`--projection-policy NAME=stop|park`) of `cairn up` and
//! `cairn run` are read.
//!
//! Output: JSON on stdout (one object per line for lists); errors one line
//! on stderr. Exit codes: 0 done, 1 refused or failed (the server's problem
//! is printed), 2 bad usage.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use cairn_projection::{PoisonPolicy, ProjectionOptions, ProjectionStatus};
use serde_json::Value;

use crate::Usage;

/// Where the running system is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The running system's base URL (`cairn up`, a service of `cairn run`,
    /// or the gateway in front of them).
    #[arg(long, env = "CAIRN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An access token of an admin (a tenant's) or the super-admin: from a
    /// realm's token endpoint, or `cairn token --tenant platform --user admin`.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `cairn projections …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Every projection: state, position, lag, failure, policy.
    List(ServerArgs),
    /// One projection's status.
    Status {
        /// The projection (as `list` names it, e.g. flights.flights).
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a stopped projection again from its checkpoint: the event it
    /// stopped at is tried again (after a fix).
    Retry {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pass over the event a projection stopped at, recorded in its dead
    /// letters as skipped by you, and run it on.
    Skip {
        name: String,
        /// The position of the event to skip; by default the one it
        /// stopped at now (read from its status first).
        #[arg(long)]
        position: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Empty a projection's read model and replay it from zero
    /// (super-admin).
    Rebuild {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The events a projection passed over (parked or skipped), one JSON
    /// object per line.
    DeadLetters {
        name: String,
        /// Only events after this position.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Runs one `cairn projections` command.
pub(crate) async fn run(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::List(server) => {
            let all = Client::new(&server)?.get("/api/projections").await?;
            for status in all.as_array().into_iter().flatten() {
                println!("{status}");
            }
        }
        ProjectionsCommand::Status { name, server } => {
            let client = Client::new(&server)?;
            println!("{}", client.get(&path(&name, "")?).await?);
        }
        ProjectionsCommand::Retry { name, server } => {
            let client = Client::new(&server)?;
            println!("{}", client.post(&path(&name, "/retry")?, None).await?);
        }
        ProjectionsCommand::Skip {
            name,
            position,
            server,
        } => {
            let client = Client::new(&server)?;
            let position = match position {
                Some(p) => p,
                None => {
                    let status: ProjectionStatus =
                        serde_json::from_value(client.get(&path(&name, "")?).await?)
                            .context("the server's status is not a projection status")?;
                    let Some(failure) = status.failure else {
                        bail!(
                            "projection {name} is {:?}, not stopped at an event: nothing to skip",
                            status.state
                        );
                    };
                    eprintln!(
                        "skipping position {} ({} of {}): {}",
                        failure.position, failure.event_type, failure.stream, failure.error
                    );
                    failure.position
                }
            };
            let body = serde_json::json!({ "position": position });
            println!("{}", client.post(&path(&name, "/skip")?, Some(body)).await?);
        }
        ProjectionsCommand::Rebuild { name, server } => {
            let client = Client::new(&server)?;
            println!("{}", client.post(&path(&name, "/rebuild")?, None).await?);
        }
        ProjectionsCommand::DeadLetters {
            name,
            after,
            limit,
            server,
        } => {
            let client = Client::new(&server)?;
            let mut query = format!("?limit={limit}");
            if let Some(after) = after {
                query.push_str(&format!("&after={after}"));
            }
            let page = client
                .get(&format!("{}{query}", path(&name, "/dead-letters")?))
                .await?;
            for item in page["items"].as_array().into_iter().flatten() {
                println!("{item}");
            }
        }
    }
    Ok(())
}

/// `/api/projections/<name><rest>`; a name is `[A-Za-z0-9._-]`, so it
/// needs no escaping and cannot climb out of the path.
fn path(name: &str, rest: &str) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if !ok {
        return Err(Usage(format!("{name:?} is not a projection name")).into());
    }
    Ok(format!("/api/projections/{name}{rest}"))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        let base = server.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Usage(format!("--url {base:?} is not an http:// or https:// URL")).into());
        }
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
            base,
            token: server.token.clone(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let request = self.http.post(format!("{}{path}", self.base));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}: is Cairn running there?", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let code = body["code"].as_str().unwrap_or("error");
        let detail = body["detail"].as_str().unwrap_or("");
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            " (pass --token or set CAIRN_TOKEN)"
        } else {
            ""
        };
        bail!("{} {code}: {detail}{hint}", status.as_u16())
    }
}

/// Reads `NAME=stop|park` specs into per-projection policies.
pub(crate) fn policies(specs: &[String]) -> anyhow::Result<BTreeMap<String, PoisonPolicy>> {
    let mut policies = BTreeMap::new();
    for spec in specs {
        let Some((name, policy)) = spec.split_once('=') else {
            bail!("--projection-policy {spec:?}: expected NAME=stop or NAME=park");
        };
        let policy: PoisonPolicy = policy
            .parse()
            .map_err(|e| anyhow::anyhow!("--projection-policy {spec:?}: {e}"))?;
        policies.insert(name.to_owned(), policy);
    }
    Ok(policies)
}

/// The projection options of `cairn up` and `cairn run`: the defaults
/// with the policies of `specs`.
pub(crate) fn options(specs: &[String]) -> anyhow::Result<ProjectionOptions> {
    Ok(ProjectionOptions {
        policies: policies(specs)?,
        ..ProjectionOptions::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_read_and_bad_specs_refused() {
        let p = policies(&["audit.log=park".into(), "flights.flights=stop".into()]).unwrap();
        assert_eq!(p["audit.log"], PoisonPolicy::Park);
        assert_eq!(p["flights.flights"], PoisonPolicy::Stop);
        for bad in ["flights", "flights=skip", "=park"] {
            let err = policies(&[bad.into()]);
            if bad == "=park" {
                // An empty name parses here; Projections::start refuses it
                // as no projection of that name.
                assert!(err.is_ok());
            } else {
                assert!(err.is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn names_cannot_leave_the_path() {
        assert_eq!(
            path("flights.flights", "/retry").unwrap(),
            "/api/projections/flights.flights/retry"
        );
        for bad in ["", "..", "a/b", "a?b", "a b", "%2e%2e"] {
            assert!(path(bad, "").is_err(), "{bad}");
        }
    }
}
