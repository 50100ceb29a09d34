//! Integration events: what leaves a service, as CloudEvents 1.0 JSON
//! (structured mode).
//!
//! `id` is the stored event's id, `source` the publishing service, `type` the
//! event type, `subject` the stream, `time` when the store committed it.
//! Extensions: `tenantid`, `traceparent`, `correlationid`, `causationid`,
//! `sequence` (the event's version in its stream, as a decimal string),
//! `prevsequence` (the version of the previous *public* event of the same
//! stream, absent for the first: consumers use it to keep per-stream order
//! across competing instances), `position` (the global position, decimal) and
//! `schemaversion`.

use cairn_core::{EventId, RecordedEvent, StreamId, TenantId, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CloudEvents spec version this crate speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every integration event's `data`.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// One integration event (CloudEvents 1.0, JSON structured mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationEvent {
    pub specversion: String,
    pub id: EventId,
    /// The publishing service, e.g. `flights`.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The stream the event was appended to.
    pub subject: StreamId,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: Value,
    pub tenantid: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// Version of the event in its stream (decimal).
    pub sequence: String,
    /// Version of the previous public event of the same stream (decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prevsequence: Option<String>,
    /// Global position in the publisher's `$all` (decimal).
    pub position: String,
    pub schemaversion: u32,
}

impl IntegrationEvent {
    /// The integration event for a stored event of `service`, published
    /// after `prev` (the version of the stream's previous public event).
    pub fn from_recorded(service: &str, event: &RecordedEvent, prev: Option<u64>) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: event.id,
            source: service.to_owned(),
            event_type: event.event_type.clone(),
            subject: event.stream.clone(),
            time: event.recorded_at,
            datacontenttype: "application/json".to_owned(),
            data: event.data.clone(),
            tenantid: event.tenant.clone(),
            traceparent: event.metadata.traceparent.clone(),
            correlationid: event.metadata.correlation_id.clone(),
            causationid: event.metadata.causation_id.clone(),
            sequence: event.version.to_string(),
            prevsequence: prev.map(|p| p.to_string()),
            position: event.position.to_string(),
            schemaversion: event.schema_version,
        }
    }

    /// The event as the publisher stored it, for code written against
    /// [`RecordedEvent`] (a projection fed by another service's events).
    /// `position` is the publisher's global position.
    pub fn to_recorded(&self) -> Result<RecordedEvent, ValidationError> {
        Ok(RecordedEvent {
            id: self.id,
            tenant: self.tenantid.clone(),
            stream: self.subject.clone(),
            version: self.version()?,
            position: self
                .position
                .parse()
                .map_err(|_| ValidationError::new("position", "must be a decimal position"))?,
            event_type: self.event_type.clone(),
            schema_version: self.schemaversion,
            data: self.data.clone(),
            metadata: cairn_core::Metadata {
                correlation_id: self.correlationid.clone(),
                causation_id: self.causationid.clone(),
                traceparent: self.traceparent.clone(),
                actor: None,
            },
            recorded_at: self.time,
        })
    }

    /// The event's version in its stream.
    pub fn version(&self) -> Result<u64, ValidationError> {
        self.sequence
            .parse()
            .map_err(|_| ValidationError::new("sequence", "must be a decimal stream version"))
    }

    /// The version of the stream's previous public event, if any.
    pub fn prev_version(&self) -> Result<Option<u64>, ValidationError> {
        self.prevsequence
            .as_deref()
            .map(|p| {
                p.parse().map_err(|_| {
                    ValidationError::new("prevsequence", "must be a decimal stream version")
                })
            })
            .transpose()
    }

    /// The routing subject / key: `<prefix>.<tenant>.<source>.<type>`.
    pub fn topic(&self, prefix: &str) -> String {
        topic(prefix, &self.tenantid, &self.source, &self.event_type)
    }

    /// Checks what serde cannot: the spec version and the decimal fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.specversion != SPEC_VERSION {
            return Err(ValidationError::new("specversion", "must be 1.0"));
        }
        validate_service(&self.source).map_err(|_| {
            ValidationError::new("source", "must be a service name (a-z, 0-9, '-', '_')")
        })?;
        validate_public_type(&self.event_type)?;
        self.version()?;
        self.prev_version()?;
        self.position
            .parse::<u64>()
            .map_err(|_| ValidationError::new("position", "must be a decimal position"))?;
        Ok(())
    }

    /// Encodes the event as CloudEvents JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an integration event always serializes")
    }

    /// Decodes and validates CloudEvents JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ValidationError> {
        let event: Self = serde_json::from_slice(bytes)
            .map_err(|e| ValidationError::new("body", format!("not a Cairn CloudEvent: {e}")))?;
        event.validate()?;
        Ok(event)
    }
}

/// `<prefix>.<tenant>.<service>.<type>`: the NATS subject and the RabbitMQ
/// routing key of an integration event. Tenants, services and event types
/// never contain `.`, `*`, `>` or `#`, so each is exactly one token.
pub fn topic(prefix: &str, tenant: &TenantId, service: &str, event_type: &str) -> String {
    format!("{prefix}.{}.{service}.{event_type}", tenant.as_str())
}

/// A service name: 1-63 bytes of `a-z`, `0-9`, `-`, `_`, starting with a
/// letter. It appears in subjects, routing keys, queue and table names.
pub fn validate_service(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "service",
            "must be 1-63 of a-z, 0-9, '-', '_', starting with a letter",
        ))
    }
}

/// A public event type: 1-128 bytes of ASCII letters, digits, `-` and `_`
/// (one subject / routing-key token).
pub fn validate_public_type(event_type: &str) -> Result<(), ValidationError> {
    let ok = !event_type.is_empty()
        && event_type.len() <= 128
        && event_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "type",
            "a public event type must be 1-128 of A-Z, a-z, 0-9, '-', '_'",
        ))
    }
}
