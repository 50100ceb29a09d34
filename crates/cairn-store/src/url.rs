//! Store URLs: which backend a URL names, and a form of it safe to print.
//!
//! `memory:` is the in-memory store, `sqlite://PATH` the embedded one and
//! `postgres://…[?schema=S]` (or `postgresql://`) PostgreSQL. The binary's
//! store tools, `cairn up` and the benchmarks read URLs through here, so
//! one spelling means one backend everywhere.

/// Which backend a store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    Sqlite(String),
    Postgres(String),
}

/// A URL that names no store: the caller's mistake, said plainly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidStoreUrl(pub String);

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self, InvalidStoreUrl> {
        if url == "memory:" || url == "memory://" {
            Ok(Self::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(InvalidStoreUrl(
                    "a sqlite store URL needs a path: sqlite://PATH".into(),
                ));
            }
            Ok(Self::Sqlite(path.to_owned()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(InvalidStoreUrl(
                "unknown store URL (expected postgres://…[?schema=S], sqlite://PATH or memory:)"
                    .into(),
            ))
        }
    }

    /// A form safe to print: no password.
    pub fn redacted(&self) -> String {
        match self {
            Self::Memory => "memory:".into(),
            Self::Sqlite(p) => format!("sqlite://{p}"),
            Self::Postgres(u) => redact_password(u),
        }
    }
}

/// `scheme://user:secret@host/…` -> `scheme://user:***@host/…`, for any
/// URL with a password (PostgreSQL, AMQP, NATS); anything else unchanged.
/// The host starts after the last `@`, so a password holding `@` is hidden
/// whole.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
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
        for bad in ["sqlite://", "mysql://x", "data/events.db"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
        let pg = StoreUrl::parse("postgres://u:hunter2@127.0.0.1/test").unwrap();
        assert_eq!(pg.redacted(), "postgres://u:***@127.0.0.1/test");
    }

    #[test]
    fn a_password_is_hidden_whole_and_nothing_else_changes() {
        assert_eq!(
            redact_password("postgres://u:p@ss@h/db?schema=s"),
            "postgres://u:***@h/db?schema=s"
        );
        assert_eq!(
            redact_password("amqp://guest:guest@127.0.0.1:5672"),
            "amqp://guest:***@127.0.0.1:5672"
        );
        assert_eq!(redact_password("nats://u@h:4222"), "nats://u@h:4222");
        assert_eq!(redact_password("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_password("not a url"), "not a url");
    }
}
