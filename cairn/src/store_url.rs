//! Opening a store from a URL: `memory:`, `sqlite://PATH` (relative or
//! absolute, `sqlite:///abs/path`), `postgres://...` / `postgresql://...`.

use std::sync::Arc;

use anyhow::{Context, bail};
use cairn_store::{EventStore, MemoryStore};

/// Which backend a store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    Memory,
    Sqlite(String),
    Postgres(String),
}

impl StoreUrl {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        if url == "memory:" || url == "memory://" {
            Ok(Self::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!("sqlite URL needs a path: sqlite://PATH");
            }
            Ok(Self::Sqlite(path.to_owned()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            bail!("unknown store URL (expected memory:, sqlite://PATH or postgres://...)")
        }
    }

    /// A form safe to print: no password.
    pub(crate) fn redacted(&self) -> String {
        match self {
            Self::Memory => "memory:".into(),
            Self::Sqlite(p) => format!("sqlite://{p}"),
            Self::Postgres(u) => redact_password(u),
        }
    }
}

fn redact_password(url: &str) -> String {
    // postgres://user:secret@host/db -> postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Splits Cairn's own `schema=NAME` query parameter off a PostgreSQL URL:
/// the rest goes to the driver, the schema selects where Cairn's tables live.
pub(crate) fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

/// Opens the store a URL names.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    let parsed = StoreUrl::parse(url)?;
    let what = parsed.redacted();
    let store: Arc<dyn EventStore> = match parsed {
        StoreUrl::Memory => Arc::new(MemoryStore::new()),
        StoreUrl::Sqlite(path) => Arc::new(
            cairn_store_sqlite::SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening {what}"))?,
        ),
        StoreUrl::Postgres(url) => {
            let (url, schema) = split_schema(&url);
            let mut options = cairn_store_postgres::PostgresOptions::default();
            if let Some(schema) = schema {
                options.schema = schema;
            }
            Arc::new(
                cairn_store_postgres::PostgresStore::connect_with(&url, options)
                    .await
                    .with_context(|| format!("opening {what}"))?,
            )
        }
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        assert_eq!(StoreUrl::parse("memory:").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse("sqlite://data/x.db").unwrap(),
            StoreUrl::Sqlite("data/x.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert!(StoreUrl::parse("sqlite://").is_err());
        assert!(StoreUrl::parse("mysql://x").is_err());
        let pg = StoreUrl::parse("postgres://u:hunter2@127.0.0.1/test").unwrap();
        assert_eq!(pg.redacted(), "postgres://u:***@127.0.0.1/test");
    }

    #[test]
    fn schema_parameter_is_split_off() {
        assert_eq!(
            split_schema("postgres://h/db"),
            ("postgres://h/db".into(), None)
        );
        assert_eq!(
            split_schema("postgres://h/db?schema=s1"),
            ("postgres://h/db".into(), Some("s1".into()))
        );
        assert_eq!(
            split_schema("postgres://h/db?sslmode=disable&schema=s1"),
            ("postgres://h/db?sslmode=disable".into(), Some("s1".into()))
        );
    }
}
