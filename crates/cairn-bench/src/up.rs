//! A real `cairn up` for the suites that measure it from outside
//! (`cairn bench commands`, `cairn bench live`): this binary started as
//! `cairn up --dev --listen 127.0.0.1:0` on a data directory of its own
//! (and on PostgreSQL a schema of its own), its address and dev token read
//! from its banner, and its HTTP API called with that token. The token is
//! never printed.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, anyhow, bail};
use axum::{
    body::Bytes,
    http::{HeaderValue, Method, Request, StatusCode, header},
};
use cairn_service_db::split_schema;
use cairn_store::StoreUrl;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use serde_json::Value;

use crate::baseline::drop_pg_schemas;

/// Longest wait for `cairn up` to print its banner (PostgreSQL migrations
/// included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a single request may take before the bench calls it failed
/// rather than hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the server's stderr kept to explain a failed start.
const STDERR_TAIL: usize = 20;

/// The store kind under test, as `--store` names it.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Embedded,
    /// A connection URL without Cairn's `schema=` parameter.
    Postgres(String),
}

impl Backend {
    pub(crate) fn parse(store: &str) -> anyhow::Result<Self> {
        if store == "embedded" {
            return Ok(Self::Embedded);
        }
        match StoreUrl::parse(store) {
            Ok(StoreUrl::Postgres(url)) => {
                let (conn, schema) = split_schema(&url);
                if let Some(schema) = schema {
                    eprintln!("bench: ignoring schema={schema}: the bench uses fresh schemas");
                }
                Ok(Self::Postgres(conn))
            }
            _ => bail!("--store: expected `embedded` or postgres://USER@HOST/DB"),
        }
    }
}

/// Where one run keeps its server's data: a directory under the system's
/// temporary directory and, on PostgreSQL, the schema `name` and its
/// `_read` schema, both named `<prefix>_<unix-ts>_<pid>`.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
}

impl Scratch {
    pub(crate) fn create(prefix: &str) -> anyhow::Result<Self> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("{prefix}_{stamp}_{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { name, dir })
    }

    /// Removes the directory and (on PostgreSQL) the schemas; the server
    /// using them must be gone.
    pub(crate) async fn remove(&self, backend: &Backend) -> anyhow::Result<()> {
        let mut cleaned = std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()));
        if let Backend::Postgres(url) = backend {
            let schemas = [self.name.clone(), format!("{}_read", self.name)];
            cleaned = cleaned.and(drop_pg_schemas(url, &schemas).await);
        }
        cleaned
    }
}

/// A running `cairn up`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// The `--dev` token of demo's admin; never printed.
    pub(crate) token: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.child.id())
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts this binary as `cairn up --dev` with its data under `dir`
    /// (and on PostgreSQL its events in `schema`), and waits for its banner.
    pub(crate) fn start(backend: &Backend, dir: &Path, schema: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the cairn binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["up", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir);
        if let Backend::Postgres(url) = backend {
            let sep = if url.contains('?') { '&' } else { '?' };
            cmd.arg("--store").arg(format!("{url}{sep}schema={schema}"));
        }
        // The server is configured by its flags alone: a CAIRN_* variable of
        // the caller's (a store, a master key, a public URL) must not point
        // it at other data or make its token's issuer another.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAIRN_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning cairn up")?;
        let stderr = child.stderr.take().context("server stderr")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        std::thread::spawn({
            let tail = Arc::clone(&tail);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
        let stdout = child.stdout.take().context("server stdout")?;
        let (lines_tx, lines) = mpsc::channel();
        // Keeps reading after the banner so the server never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut server = Self {
            child,
            base: String::new(),
            token: String::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let why = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break format!("no banner within {START_TIMEOUT:?}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to take the last lines.
                    let _ = server.child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    break "it exited before printing its banner".into();
                }
            };
            if let Some(rest) = line.strip_prefix("cairn up: listening on ") {
                server.base = rest.trim().to_owned();
            }
            if let Some(rest) = line.trim_start().strip_prefix("token:") {
                server.token = rest.trim().to_owned();
            }
            if line.trim_start().starts_with("stop:") {
                if server.base.is_empty() || server.token.is_empty() {
                    break "its banner had no address or no token".into();
                }
                return Ok(server);
            }
        };
        let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        bail!(
            "cairn up did not start: {why}; its stderr:\n{}",
            tail.join("\n")
        )
    }
}

impl Server {
    /// The server's resident memory (`VmRSS` of `/proc/<pid>/status`), KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        vm_rss_kib(&status).with_context(|| format!("no VmRSS in {path}"))
    }
}

/// `VmRSS` of a `/proc/<pid>/status` text, in KiB (the file says `kB`).
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The server's API as the clients call it: one connection pool, the dev
/// token on every request.
#[derive(Clone)]
pub(crate) struct Api {
    client: HttpClient,
    base: String,
    authorization: HeaderValue,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One answer, read to its end.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) position: Option<u64>,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Status and the start of the body, for a failure report.
    pub(crate) fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(300).collect();
        format!("{} {body}", self.status)
    }
}

impl Api {
    pub(crate) fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("the server's token is not a valid header value"))?;
        authorization.set_sensitive(true);
        Ok(Self {
            client,
            base: base.to_owned(),
            authorization,
        })
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.authorization.clone());
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(body)?))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).context("building a request")?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let position = response
                .headers()
                .get(cairn_http::POSITION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status,
                position,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_must_be_embedded_or_postgres() {
        assert!(matches!(Backend::parse("embedded"), Ok(Backend::Embedded)));
        match Backend::parse("postgres://u@h/db?schema=x&sslmode=disable") {
            Ok(Backend::Postgres(url)) => assert_eq!(url, "postgres://u@h/db?sslmode=disable"),
            other => panic!("{other:?}"),
        }
        for bad in ["sqlite://x.db", "memory:", "mysql://h/db", ""] {
            let err = Backend::parse(bad).unwrap_err().to_string();
            assert!(err.contains("--store"), "{bad}: {err}");
        }
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tcairn\nVmPeak:\t  900 kB\nVmRSS:\t   65536 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(vm_rss_kib(status), Some(65_536));
        assert_eq!(vm_rss_kib("Name:\tcairn\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_rss_kib(&own).unwrap() > 0);
    }
}
