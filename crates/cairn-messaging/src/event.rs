//! Integration events: what leaves a service, as CloudEvents 1.0 JSON
//! (structured mode).
//!
//! `id` is the stored event's id, `source` the publishing service, `type` the
//! event type, `subject` the stream, `time` when the store committed it.
//! Extensions: `tenantid`, `traceparent`, `correlationid`, `causationid`,
//! `actor` (the user or service on whose behalf the event was written: an
//! id, never a credential), `sequence` (the event's version in its stream,
//! as a decimal string), `prevsequence` (the version of the previous
//! *public* event of the same stream, absent for the first: consumers use
//! it to keep per-stream order across competing instances), `position` (the
//! global position, decimal) and `schemaversion`.
//!
//! The stored event's metadata (trace, correlation, causation, actor)
//! survives the trip: [`IntegrationEvent::to_recorded`] gives back what
//! [`IntegrationEvent::from_recorded`] was given. Decoding refuses metadata
//! extensions the store itself would refuse (empty, too long, control
//! characters, a malformed traceparent), so a consumer never hands a
//! hostile value to a projection or a command; events published before the
//! `actor` extension existed decode with no actor.

use cairn_core::{EventId, Metadata, RecordedEvent, StreamId, TenantId, ValidationError};
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
    /// Who the event was written for: the stored metadata's actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
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
            actor: event.metadata.actor.clone(),
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
            metadata: self.metadata(),
            recorded_at: self.time,
        })
    }

    /// The stored event's metadata, from the extensions that carry it.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: self.correlationid.clone(),
            causation_id: self.causationid.clone(),
            traceparent: self.traceparent.clone(),
            actor: self.actor.clone(),
        }
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

    /// Checks what serde cannot: the spec version, the decimal fields and
    /// the metadata extensions (by the store's own rules, so every stored
    /// event passes).
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
        self.metadata()
            .validate()
            .map_err(|e| ValidationError::new(extension_of(e.field), e.reason))?;
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

/// The CloudEvents extension that carries a [`Metadata`] field, so a
/// refusal names the attribute as it is on the wire.
fn extension_of(metadata_field: &'static str) -> &'static str {
    match metadata_field {
        "metadata.correlationId" => "correlationid",
        "metadata.causationId" => "causationid",
        "metadata.traceparent" => "traceparent",
        "metadata.actor" => "actor",
        other => other,
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

#[cfg(test)]
mod tests {
    use cairn_core::{MAX_ACTOR_BYTES, MAX_CORRELATION_ID_BYTES};
    use serde_json::json;

    use super::*;
    use crate::PublicEvents;

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn recorded(category: &str, metadata: Metadata) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            tenant: TenantId::new("acme").unwrap(),
            stream: StreamId::new(format!("{category}-1")).unwrap(),
            version: 3,
            position: 42,
            event_type: "UserCreated".to_owned(),
            schema_version: 1,
            data: json!({"name": "Ada"}),
            metadata,
            recorded_at: Utc::now(),
        }
    }

    fn full_metadata() -> Metadata {
        Metadata {
            correlation_id: Some("c-1".to_owned()),
            causation_id: Some("cmd-7".to_owned()),
            traceparent: Some(TRACE.to_owned()),
            actor: Some("ada".to_owned()),
        }
    }

    /// The wire form of `event` with one attribute set to `value`.
    fn wire_with(event: &IntegrationEvent, attribute: &str, value: Value) -> Vec<u8> {
        let mut wire: Value = serde_json::from_slice(&event.to_json()).unwrap();
        wire[attribute] = value;
        serde_json::to_vec(&wire).unwrap()
    }

    #[test]
    fn the_metadata_survives_the_broker() {
        let stored = recorded("user", full_metadata());
        let sent = IntegrationEvent::from_recorded("identity", &stored, Some(2));
        let wire: Value = serde_json::from_slice(&sent.to_json()).unwrap();
        assert_eq!(wire["actor"], "ada");
        assert_eq!(wire["correlationid"], "c-1");
        assert_eq!(wire["causationid"], "cmd-7");
        assert_eq!(wire["traceparent"], TRACE);
        let heard = IntegrationEvent::from_json(&sent.to_json()).unwrap();
        assert_eq!(heard, sent);
        assert_eq!(heard.to_recorded().unwrap(), stored);
    }

    #[test]
    fn an_event_without_actor_has_none_on_the_wire_or_after() {
        let stored = recorded(
            "user",
            Metadata {
                actor: None,
                ..full_metadata()
            },
        );
        let sent = IntegrationEvent::from_recorded("identity", &stored, None);
        let wire: Value = serde_json::from_slice(&sent.to_json()).unwrap();
        assert!(wire.get("actor").is_none(), "{wire}");
        let heard = IntegrationEvent::from_json(&sent.to_json()).unwrap();
        assert_eq!(heard.to_recorded().unwrap(), stored);
    }

    #[test]
    fn a_message_from_before_the_actor_extension_still_decodes() {
        let stored = recorded("user", full_metadata());
        let sent = IntegrationEvent::from_recorded("identity", &stored, None);
        let mut wire: Value = serde_json::from_slice(&sent.to_json()).unwrap();
        assert!(wire.as_object_mut().unwrap().remove("actor").is_some());
        let heard = IntegrationEvent::from_json(&serde_json::to_vec(&wire).unwrap()).unwrap();
        assert_eq!(heard.actor, None);
        let metadata = heard.to_recorded().unwrap().metadata;
        assert_eq!(
            metadata,
            Metadata {
                actor: None,
                ..full_metadata()
            }
        );
    }

    #[test]
    fn an_actor_the_store_would_refuse_is_refused_on_arrival() {
        let sent =
            IntegrationEvent::from_recorded("flights", &recorded("flight", full_metadata()), None);
        let longest = "a".repeat(MAX_ACTOR_BYTES);
        let heard =
            IntegrationEvent::from_json(&wire_with(&sent, "actor", json!(longest))).unwrap();
        assert_eq!(heard.to_recorded().unwrap().metadata.actor, Some(longest));
        for hostile in [
            json!(""),
            json!("a".repeat(MAX_ACTOR_BYTES + 1)),
            json!("ada\nadmin"),
            json!("ada\u{1b}[2J"),
            json!("ada\u{0}"),
        ] {
            let err = IntegrationEvent::from_json(&wire_with(&sent, "actor", hostile.clone()))
                .expect_err("a hostile actor is refused");
            assert_eq!(err.field, "actor", "{hostile}");
        }
        let err = IntegrationEvent::from_json(&wire_with(&sent, "actor", json!(7))).unwrap_err();
        assert_eq!(err.field, "body");
    }

    #[test]
    fn the_other_metadata_extensions_are_refused_by_the_same_rules() {
        let sent =
            IntegrationEvent::from_recorded("flights", &recorded("flight", full_metadata()), None);
        for (attribute, hostile) in [
            ("correlationid", json!("c\r\n1")),
            ("causationid", json!("")),
            (
                "correlationid",
                json!("c".repeat(MAX_CORRELATION_ID_BYTES + 1)),
            ),
            ("traceparent", json!("00-not-a-trace-01")),
        ] {
            let err = IntegrationEvent::from_json(&wire_with(&sent, attribute, hostile))
                .expect_err("hostile metadata is refused");
            assert_eq!(err.field, attribute);
        }
    }

    #[test]
    fn a_redacted_event_keeps_its_actor() {
        let public = PublicEvents::new("identity", ["user"], ["UserCreated"])
            .unwrap()
            .with_redacted(["user"]);
        let stored = recorded("user", full_metadata());
        let sent = public.integration_event(&stored, None);
        assert_eq!(sent.data, json!({"redacted": true}));
        let heard = IntegrationEvent::from_json(&sent.to_json()).unwrap();
        assert_eq!(heard.to_recorded().unwrap().metadata, stored.metadata);
    }
}
