//! Connection options and the names a broker handle derives from its prefix.

use std::time::Duration;

use cairn_messaging::BrokerError;

/// How a [`NatsBroker`](crate::NatsBroker) connects and what it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// First token(s) of every subject this handle uses: events are
    /// `<prefix>.<tenant>.<service>.<type>`, requests `<prefix>.rpc.<service>`.
    /// One or more `.`-separated tokens of `a-z`, `0-9`, `-`, `_`.
    pub prefix: String,
    /// How long the event stream keeps a message (JetStream `max_age`).
    /// `Duration::ZERO` keeps messages for ever.
    pub stream_max_age: Duration,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a re-sent event.
    /// At most `stream_max_age` (when that is not zero).
    pub duplicate_window: Duration,
    /// Bound on every round trip: a JetStream API call, a publish
    /// acknowledgement, an ack or nack of a delivery.
    pub request_timeout: Duration,
    /// Bound on opening the connection (TCP and the NATS handshake).
    pub connect_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            prefix: "cairn".to_owned(),
            stream_max_age: Duration::from_secs(7 * 24 * 60 * 60),
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsOptions {
    /// The defaults with another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BrokerError> {
        validate_prefix(&self.prefix)?;
        if !self.stream_max_age.is_zero() && self.duplicate_window > self.stream_max_age {
            return Err(BrokerError::Refused(
                "duplicate_window must not exceed stream_max_age".to_owned(),
            ));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(BrokerError::Refused(
                "request_timeout and connect_timeout must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

fn validate_prefix(prefix: &str) -> Result<(), BrokerError> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    if prefix.len() <= 64 && prefix.split('.').all(token_ok) {
        Ok(())
    } else {
        Err(BrokerError::Refused(format!(
            "invalid prefix {prefix:?}: 1-64 bytes, '.'-separated tokens of a-z, 0-9, '-', '_'"
        )))
    }
}

/// The JetStream stream holding a prefix's events: the prefix upper-cased,
/// `-` and `.` turned into `_`, then `_EVENTS` (`cairn` → `CAIRN_EVENTS`).
pub fn stream_name(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    name.push_str("_EVENTS");
    name
}

/// The subjects the event stream captures: `<prefix>.*.*.*`, exactly the
/// four-token `<prefix>.<tenant>.<service>.<type>`. Request subjects
/// (`<prefix>.rpc.<service>`) have three tokens after the prefix's own, so
/// the stream never captures them.
pub fn events_filter(prefix: &str) -> String {
    format!("{prefix}.*.*.*")
}

/// The subject a consumer group of `source`'s events filters on:
/// `<prefix>.*.<source>.*` (every tenant, every type).
pub fn source_filter(prefix: &str, source: &str) -> String {
    format!("{prefix}.*.{source}.*")
}

/// The subject requests to `service` are sent to: `<prefix>.rpc.<service>`.
/// The message name travels in the `Cairn-Name` header.
pub fn rpc_subject(prefix: &str, service: &str) -> String {
    format!("{prefix}.rpc.{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        assert_eq!(stream_name("cairn"), "CAIRN_EVENTS");
        assert_eq!(stream_name("t0a-b.c_d"), "T0A_B_C_D_EVENTS");
        assert_eq!(events_filter("cairn"), "cairn.*.*.*");
        assert_eq!(source_filter("cairn", "flights"), "cairn.*.flights.*");
        assert_eq!(rpc_subject("cairn", "flights"), "cairn.rpc.flights");
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["cairn", "t0123456789", "a-b_c", "prod.cairn"] {
            assert!(NatsOptions::with_prefix(ok).validate().is_ok(), "{ok}");
        }
        for bad in ["", "Cairn", "a..b", "a.", "a*", "a>", "a b", ".a"] {
            assert!(NatsOptions::with_prefix(bad).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_duplicate_window_fits_in_the_stream() {
        let options = NatsOptions {
            stream_max_age: Duration::from_secs(60),
            ..NatsOptions::default()
        };
        assert!(options.validate().is_err());
        let forever = NatsOptions {
            stream_max_age: Duration::ZERO,
            ..NatsOptions::default()
        };
        assert!(forever.validate().is_ok());
    }
}
