//! Validated identifiers.
//!
//! A stream is named by `(tenant, stream id)`; its category is the part of the
//! stream id before the first `-` (`flight-7f3a` is in category `flight`).
//! Identifiers are checked once, at construction, so the rest of the code can
//! trust them.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::ValidationError;

/// Longest accepted stream id, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 256;
/// Longest accepted tenant id, in bytes.
pub const MAX_TENANT_ID_BYTES: usize = 63;

/// A tenant: lower-case ASCII letters, digits, `-` and `_`, starting with a
/// letter or digit, at most 63 bytes (it appears in URLs, subjects and schema
/// names).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn new(id: impl AsRef<str>) -> Result<Self, ValidationError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(ValidationError::new("tenant", "must not be empty"));
        }
        if id.len() > MAX_TENANT_ID_BYTES {
            return Err(ValidationError::new(
                "tenant",
                format!("must be at most {MAX_TENANT_ID_BYTES} bytes"),
            ));
        }
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if !id.chars().all(valid_char) || !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ValidationError::new(
                "tenant",
                "must use only a-z, 0-9, '-' and '_' and start with a letter or digit",
            ));
        }
        Ok(Self(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stream id: any non-empty UTF-8 string of at most 256 bytes without
/// control characters, not starting with `$` (reserved for system streams
/// such as `$all`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    pub fn new(id: impl AsRef<str>) -> Result<Self, ValidationError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(ValidationError::new("stream", "must not be empty"));
        }
        if id.len() > MAX_STREAM_ID_BYTES {
            return Err(ValidationError::new(
                "stream",
                format!(
                    "must be at most {MAX_STREAM_ID_BYTES} bytes, got {}",
                    id.len()
                ),
            ));
        }
        if id.starts_with('$') {
            return Err(ValidationError::new(
                "stream",
                "ids starting with '$' are reserved",
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "stream",
                "must not contain control characters",
            ));
        }
        Ok(Self(id.into()))
    }

    /// Builds `category-id`, the conventional stream id of an aggregate.
    pub fn for_aggregate(category: &str, id: impl fmt::Display) -> Result<Self, ValidationError> {
        Self::new(format!("{category}-{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> Category<'_> {
        Category(self.0.split_once('-').map_or(&self.0, |(c, _)| c))
    }
}

/// The category of a stream, borrowed from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Category<'a>(&'a str);

impl<'a> Category<'a> {
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Display for Category<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An event's id, chosen by the client (UUIDv7 by default, so ids sort by
/// creation time). Resending an id makes the append idempotent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh UUIDv7.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for EventId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| ValidationError::new("event_id", format!("not a UUID: {e}")))
    }
}

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.0)
            }
        }
        impl FromStr for $ty {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_id_impls!(TenantId);
string_id_impls!(StreamId);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(
            StreamId::new("flight-7f3a-x").unwrap().category().as_str(),
            "flight"
        );
        assert_eq!(
            StreamId::new("ledger").unwrap().category().as_str(),
            "ledger"
        );
        assert_eq!(StreamId::new("-x").unwrap().category().as_str(), "");
    }

    #[test]
    fn stream_ids_accept_unicode_and_reject_bad_input() {
        assert!(StreamId::new("vol-✈️-Åre").is_ok());
        assert_eq!(StreamId::new("").unwrap_err().field, "stream");
        assert!(StreamId::new("x".repeat(MAX_STREAM_ID_BYTES)).is_ok());
        assert!(StreamId::new("x".repeat(MAX_STREAM_ID_BYTES + 1)).is_err());
        assert!(StreamId::new("$all").is_err());
        assert!(StreamId::new("a\nb").is_err());
    }

    #[test]
    fn tenant_ids_are_url_safe() {
        assert!(TenantId::new("acme-1_x").is_ok());
        for bad in ["", "Acme", "a b", "-a", "ä", &"a".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_round_trip_through_serde_and_are_validated_on_the_way_in() {
        let s: StreamId = serde_json::from_str("\"flight-1\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"flight-1\"");
        assert!(serde_json::from_str::<TenantId>("\"BAD\"").is_err());
    }

    #[test]
    fn event_ids_are_v7_and_parse() {
        let id = EventId::new();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        assert!("nope".parse::<EventId>().is_err());
    }
}
