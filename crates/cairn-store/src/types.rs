//! The value types of the store contract.

use std::{fmt, str::FromStr};

use cairn_core::{RecordedEvent, StreamId, TenantId, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the caller believes about the stream before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no-stream"),
            ExpectedVersion::StreamExists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl FromStr for ExpectedVersion {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Self::Any),
            "no-stream" => Ok(Self::NoStream),
            "exists" => Ok(Self::StreamExists),
            n => n.parse().map(Self::Exact).map_err(|_| {
                ValidationError::new(
                    "expected",
                    "must be any, no-stream, exists or a version number",
                )
            }),
        }
    }
}

/// Where an append landed. A replayed (idempotent) append returns the
/// outcome of the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendOutcome {
    pub first_version: u64,
    /// The stream's version after the append: the next `Exact` to expect.
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Forward,
    Backward,
}

/// How to read a stream: from a version (inclusive), in a direction, at most
/// `limit` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStream {
    pub direction: Direction,
    /// First version to return; `None` is the start (forward) or the end (backward).
    pub from: Option<u64>,
    pub limit: usize,
}

impl ReadStream {
    /// Every event, oldest first.
    pub fn all() -> Self {
        Self {
            direction: Direction::Forward,
            from: None,
            limit: usize::MAX,
        }
    }

    pub fn forward_from(version: u64) -> Self {
        Self {
            direction: Direction::Forward,
            from: Some(version),
            limit: usize::MAX,
        }
    }

    /// Newest first, from the end.
    pub fn backward() -> Self {
        Self {
            direction: Direction::Backward,
            from: None,
            limit: usize::MAX,
        }
    }

    pub fn backward_from(version: u64) -> Self {
        Self {
            direction: Direction::Backward,
            from: Some(version),
            limit: usize::MAX,
        }
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The inclusive version range this read covers in a stream whose
    /// readable versions are `first_readable..=last`; `None` when empty.
    pub fn bounds(&self, first_readable: u64, last: u64) -> Option<(u64, u64)> {
        if self.limit == 0 || first_readable > last {
            return None;
        }
        let span = (self.limit - 1) as u64;
        let (lo, hi) = match self.direction {
            Direction::Forward => {
                let lo = self.from.unwrap_or(0).max(first_readable);
                (lo, lo.saturating_add(span).min(last))
            }
            Direction::Backward => {
                let hi = self.from.unwrap_or(last).min(last);
                (hi.saturating_sub(span).max(first_readable), hi)
            }
        };
        (lo <= hi).then_some((lo, hi))
    }
}

/// Which tenants a `$all` read covers. Reading across every tenant is an
/// explicit choice, never a missing filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    Tenants(Vec<TenantId>),
    AllTenants,
}

/// A filter on `$all`: tenants (required), and optionally categories and
/// event types (empty means all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllFilter {
    pub tenants: TenantScope,
    pub categories: Vec<String>,
    pub event_types: Vec<String>,
}

impl AllFilter {
    /// One tenant's events.
    pub fn tenant(tenant: TenantId) -> Self {
        Self::tenants([tenant])
    }

    /// Several tenants' events (a tenant group).
    pub fn tenants(tenants: impl IntoIterator<Item = TenantId>) -> Self {
        Self {
            tenants: TenantScope::Tenants(tenants.into_iter().collect()),
            categories: Vec::new(),
            event_types: Vec::new(),
        }
    }

    /// Every tenant's events: for the platform's own relays and for audited
    /// super-tenant reads.
    pub fn all_tenants() -> Self {
        Self {
            tenants: TenantScope::AllTenants,
            categories: Vec::new(),
            event_types: Vec::new(),
        }
    }

    /// Only streams of these categories; `flight` and `flight-*` both mean
    /// the `flight` category.
    pub fn categories<S: AsRef<str>>(mut self, categories: impl IntoIterator<Item = S>) -> Self {
        self.categories = categories
            .into_iter()
            .map(|c| {
                let c = c.as_ref();
                c.strip_suffix("-*").unwrap_or(c).to_owned()
            })
            .collect();
        self
    }

    /// Only events of these types.
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the filter lets `event` through.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let tenant_ok = match &self.tenants {
            TenantScope::AllTenants => true,
            TenantScope::Tenants(ts) => ts.contains(&event.tenant),
        };
        tenant_ok
            && (self.categories.is_empty()
                || self
                    .categories
                    .iter()
                    .any(|c| c == event.stream.category().as_str()))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
    }
}

/// A stream's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub stream: StreamId,
    /// Version of the last event.
    pub version: u64,
    pub deleted: bool,
    /// Versions below this are hidden from stream reads.
    pub truncate_before: Option<u64>,
}

/// A stream's state folded up to `version`, so loading need not replay from 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The version of the last event folded into `state`.
    pub version: u64,
    /// The snapshot's own schema version, so an old shape can be discarded.
    pub schema_version: u32,
    pub state: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_bounds() {
        assert_eq!(ReadStream::all().bounds(0, 9), Some((0, 9)));
        assert_eq!(
            ReadStream::forward_from(2).limit(3).bounds(0, 9),
            Some((2, 4))
        );
        assert_eq!(
            ReadStream::forward_from(2).limit(3).bounds(5, 9),
            Some((5, 7))
        );
        assert_eq!(
            ReadStream::forward_from(8).limit(3).bounds(0, 9),
            Some((8, 9))
        );
        assert_eq!(ReadStream::forward_from(10).bounds(0, 9), None);
        assert_eq!(ReadStream::backward().limit(2).bounds(0, 9), Some((8, 9)));
        assert_eq!(
            ReadStream::backward_from(3).limit(10).bounds(1, 9),
            Some((1, 3))
        );
        assert_eq!(
            ReadStream::backward_from(30).limit(2).bounds(0, 9),
            Some((8, 9))
        );
        assert_eq!(ReadStream::backward_from(3).bounds(4, 9), None);
        assert_eq!(ReadStream::all().limit(0).bounds(0, 9), None);
    }

    #[test]
    fn expected_version_parses() {
        assert_eq!(
            "any".parse::<ExpectedVersion>().unwrap(),
            ExpectedVersion::Any
        );
        assert_eq!(
            "7".parse::<ExpectedVersion>().unwrap(),
            ExpectedVersion::Exact(7)
        );
        assert!("-1".parse::<ExpectedVersion>().is_err());
    }
}
