//! What goes into an event store ([`NewEvent`]) and what comes out
//! ([`RecordedEvent`]), with the [`Metadata`] that travels with every event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{EventId, StreamId, TenantId, ValidationError};

/// Longest accepted event type name, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Longest accepted correlation or causation id, in bytes.
pub const MAX_CORRELATION_ID_BYTES: usize = 128;
/// Longest accepted actor, in bytes.
pub const MAX_ACTOR_BYTES: usize = 256;

/// Who and what caused an event, and the trace it belongs to. Every field is
/// optional; those present are validated before anything is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Shared by every message of one business transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message (command or event) that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// W3C trace context (`00-<trace-id>-<parent-id>-<flags>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The user or service on whose behalf the event was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl Metadata {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_text(
            &self.correlation_id,
            "metadata.correlationId",
            MAX_CORRELATION_ID_BYTES,
        )?;
        check_text(
            &self.causation_id,
            "metadata.causationId",
            MAX_CORRELATION_ID_BYTES,
        )?;
        check_text(&self.actor, "metadata.actor", MAX_ACTOR_BYTES)?;
        if let Some(tp) = &self.traceparent
            && !is_traceparent(tp)
        {
            return Err(ValidationError::new(
                "metadata.traceparent",
                "must be W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>, ids not all zero",
            ));
        }
        Ok(())
    }
}

fn check_text(
    value: &Option<String>,
    field: &'static str,
    max: usize,
) -> Result<(), ValidationError> {
    let Some(v) = value else { return Ok(()) };
    if v.is_empty() {
        return Err(ValidationError::new(
            field,
            "must not be empty when present",
        ));
    }
    if v.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn is_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// An event to append. Its id is chosen by the writer; resending the same id
/// with the same content is a no-op that returns the first result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    /// The payload's schema version, starting at 1; upcasters lift older
    /// versions on read.
    pub schema_version: u32,
    pub data: Value,
    #[serde(default)]
    pub metadata: Metadata,
}

impl NewEvent {
    /// A schema-version-1 event with a fresh UUIDv7 id and no metadata.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: Metadata::default(),
        }
    }

    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_event_type(&self.event_type)?;
        if self.schema_version == 0 {
            return Err(ValidationError::new("schema_version", "starts at 1"));
        }
        self.metadata.validate()
    }

    /// Whether `recorded` holds the same content as this event: the test an
    /// idempotent append uses to tell a resend from a conflicting reuse of an id.
    pub fn same_content_as(&self, recorded: &RecordedEvent) -> bool {
        self.id == recorded.id
            && self.event_type == recorded.event_type
            && self.schema_version == recorded.schema_version
            && self.data == recorded.data
            && self.metadata == recorded.metadata
    }
}

/// Checks an event type name: 1 to 128 bytes, no whitespace or control characters.
pub fn validate_event_type(t: &str) -> Result<(), ValidationError> {
    if t.is_empty() {
        return Err(ValidationError::new("event_type", "must not be empty"));
    }
    if t.len() > MAX_EVENT_TYPE_BYTES {
        return Err(ValidationError::new(
            "event_type",
            format!("must be at most {MAX_EVENT_TYPE_BYTES} bytes"),
        ));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new(
            "event_type",
            "must not contain whitespace",
        ));
    }
    Ok(())
}

/// An event as stored: the envelope every reader sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    pub id: EventId,
    pub tenant: TenantId,
    pub stream: StreamId,
    /// Position in its stream, from 0.
    pub version: u64,
    /// Position in the global `$all` log, from 1; strictly increasing in the
    /// order readers see events.
    pub position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
    #[serde(default)]
    pub metadata: Metadata,
    /// When the store committed the event (set by the store, microsecond precision).
    pub recorded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_must_be_w3c() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let md = |tp: &str| Metadata {
            traceparent: Some(tp.into()),
            ..Default::default()
        };
        assert!(md(ok).validate().is_ok());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                md(bad).validate().unwrap_err().field,
                "metadata.traceparent",
                "{bad}"
            );
        }
    }

    #[test]
    fn event_validation_names_the_bad_field() {
        let e = NewEvent::new("", serde_json::json!({}));
        assert_eq!(e.validate().unwrap_err().field, "event_type");
        let e = NewEvent::new("A B", serde_json::json!({}));
        assert!(e.validate().is_err());
        let e = NewEvent::new("Ok", serde_json::json!({})).with_schema_version(0);
        assert_eq!(e.validate().unwrap_err().field, "schema_version");
        let e = NewEvent::new("Ok", serde_json::json!({})).with_metadata(Metadata {
            actor: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(e.validate().unwrap_err().field, "metadata.actor");
    }
}
