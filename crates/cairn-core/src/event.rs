//! Typed domain events and their stored form.
//!
//! A service describes its events as one enum with serde's adjacent tagging,
//! `#[serde(tag = "type", content = "data")]`: the variant name becomes the
//! stored event type and its fields the JSON payload. [`encode_event`] and
//! [`decode_event`] convert between that enum and [`NewEvent`] /
//! [`RecordedEvent`], running upcasters on the way in.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::{NewEvent, RecordedEvent, UpcastError, Upcasters};

/// A typed event enum, serialized with `#[serde(tag = "type", content = "data")]`.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The current schema version of `event_type`; 1 unless the payload has
    /// changed shape and upcasters lift older versions.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }
}

/// A stored payload could not be turned into the typed event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    #[error(
        "{event_type} is at schema version {found}, expected {expected}, and no upcaster lifts it"
    )]
    SchemaVersion {
        event_type: String,
        found: u32,
        expected: u32,
    },
    #[error("payload of {event_type} does not match its type: {source}")]
    Payload {
        event_type: String,
        source: serde_json::Error,
    },
    #[error(
        "event enums must serialize as {{\"type\": ..., \"data\": ...}} (serde adjacent tagging)"
    )]
    Representation,
}

/// Turns a typed event into a [`NewEvent`] with a fresh id at the type's
/// current schema version.
pub fn encode_event<E: DomainEvent>(event: &E) -> Result<NewEvent, DecodeError> {
    let value = serde_json::to_value(event).map_err(|source| DecodeError::Payload {
        event_type: std::any::type_name::<E>().to_owned(),
        source,
    })?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::Representation);
    };
    let Some(Value::String(event_type)) = map.remove("type") else {
        return Err(DecodeError::Representation);
    };
    let data = map.remove("data").unwrap_or(Value::Null);
    if !map.is_empty() {
        return Err(DecodeError::Representation);
    }
    let version = E::schema_version(&event_type);
    Ok(NewEvent::new(event_type, data).with_schema_version(version))
}

/// Reads a recorded event as `E`, upcasting its payload first.
pub fn decode_event<E: DomainEvent>(
    upcasters: &Upcasters,
    recorded: &RecordedEvent,
) -> Result<E, DecodeError> {
    decode_payload(
        upcasters,
        &recorded.event_type,
        recorded.schema_version,
        recorded.data.clone(),
    )
}

/// Checks a payload before it is stored, exactly as [`decode_event`] will
/// read it back: `None` when `event_type` is none of `E`'s types, else
/// whether the payload decodes.
pub fn check_payload<E: DomainEvent>(
    upcasters: &Upcasters,
    event_type: &str,
    schema_version: u32,
    data: &Value,
) -> Option<Result<(), DecodeError>> {
    event_types::<E>().contains(&event_type).then(|| {
        decode_payload::<E>(upcasters, event_type, schema_version, data.clone()).map(|_| ())
    })
}

/// The event types `E` declares (its variants' names, as stored).
pub fn event_types<E: DomainEvent>() -> &'static [&'static str] {
    variants::of::<E>()
}

fn decode_payload<E: DomainEvent>(
    upcasters: &Upcasters,
    event_type: &str,
    schema_version: u32,
    data: Value,
) -> Result<E, DecodeError> {
    let (version, data) = upcasters.upcast(event_type, schema_version, data)?;
    let expected = E::schema_version(event_type);
    if version != expected {
        return Err(DecodeError::SchemaVersion {
            event_type: event_type.to_owned(),
            found: version,
            expected,
        });
    }
    let mut map = Map::with_capacity(2);
    map.insert("type".into(), Value::String(event_type.to_owned()));
    if !data.is_null() {
        map.insert("data".into(), data);
    }
    serde_json::from_value(Value::Object(map)).map_err(|source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    })
}

/// Reads an enum's variant names from its `Deserialize` impl: serde hands
/// them to the deserializer when it reads an adjacently tagged enum's tag
/// (`deserialize_enum`), and to the error for an unknown one. A probe
/// deserializer presents `{"type": <tag>}` and keeps the list.
mod variants {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

    pub(super) fn of<E: super::DomainEvent>() -> &'static [&'static str] {
        match E::deserialize(Tagged { tag_given: false }) {
            Err(Found(Some(names))) => names,
            // An enum that reads its tag some other way declares nothing
            // this can see: no types, so nothing is claimed.
            Ok(_) | Err(Found(None)) => &[],
        }
    }

    /// The probe's error: carries the variant names once seen.
    #[derive(Debug)]
    struct Found(Option<&'static [&'static str]>);

    impl fmt::Display for Found {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("variant probe")
        }
    }

    impl std::error::Error for Found {}

    impl de::Error for Found {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Found(None)
        }

        fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
            Found(Some(expected))
        }
    }

    /// `{"type": <tag>}`.
    struct Tagged {
        tag_given: bool,
    }

    impl<'de> Deserializer<'de> for Tagged {
        type Error = Found;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Found> {
            visitor.visit_map(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct enum identifier ignored_any
        }
    }

    impl<'de> MapAccess<'de> for Tagged {
        type Error = Found;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Found> {
            if self.tag_given {
                return Ok(None);
            }
            self.tag_given = true;
            seed.deserialize(de::value::StrDeserializer::new("type"))
                .map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Found> {
            seed.deserialize(Tag)
        }
    }

    /// The tag's value: a name no enum declares.
    struct Tag;

    impl<'de> Deserializer<'de> for Tag {
        type Error = Found;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Found> {
            visitor.visit_str("")
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Found> {
            Err(Found(Some(variants)))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventId, Metadata, StreamId, TenantId};
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
    enum FlightEvent {
        FlightScheduled { number: String, seat_capacity: u32 },
        FlightDeparted,
    }

    impl DomainEvent for FlightEvent {
        fn schema_version(event_type: &str) -> u32 {
            if event_type == "FlightScheduled" {
                2
            } else {
                1
            }
        }
    }

    fn recorded(new: NewEvent) -> RecordedEvent {
        RecordedEvent {
            id: EventId::new(),
            tenant: TenantId::new("t").unwrap(),
            stream: StreamId::new("flight-1").unwrap(),
            version: 0,
            position: 1,
            event_type: new.event_type,
            schema_version: new.schema_version,
            data: new.data,
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn round_trips_through_the_stored_form() {
        let up = Upcasters::new();
        for e in [
            FlightEvent::FlightScheduled {
                number: "SK1".into(),
                seat_capacity: 3,
            },
            FlightEvent::FlightDeparted,
        ] {
            let new = encode_event(&e).unwrap();
            let back: FlightEvent = decode_event(&up, &recorded(new)).unwrap();
            assert_eq!(back, e);
        }
        let new = encode_event(&FlightEvent::FlightDeparted).unwrap();
        assert_eq!(
            (new.event_type.as_str(), new.schema_version),
            ("FlightDeparted", 1)
        );
    }

    #[test]
    fn old_versions_are_upcast_and_missing_upcasters_are_reported() {
        let old = NewEvent::new("FlightScheduled", json!({"number": "SK1", "seats": 9}));
        let err = decode_event::<FlightEvent>(&Upcasters::new(), &recorded(old.clone()));
        assert!(matches!(
            err,
            Err(DecodeError::SchemaVersion {
                found: 1,
                expected: 2,
                ..
            })
        ));

        let mut up = Upcasters::new();
        up.register("FlightScheduled", 1, |v| {
            Ok(json!({"number": v["number"], "seatCapacity": v["seats"]}))
        });
        let e: FlightEvent = decode_event(&up, &recorded(old)).unwrap();
        assert_eq!(
            e,
            FlightEvent::FlightScheduled {
                number: "SK1".into(),
                seat_capacity: 9
            }
        );
    }

    #[test]
    fn an_enum_declares_its_variants_as_event_types() {
        assert_eq!(
            event_types::<FlightEvent>(),
            ["FlightScheduled", "FlightDeparted"]
        );
    }

    #[test]
    fn payloads_are_checked_as_they_will_be_read() {
        let up = Upcasters::new();
        let good = json!({"number": "SK1", "seatCapacity": 3});
        assert!(matches!(
            check_payload::<FlightEvent>(&up, "FlightScheduled", 2, &good),
            Some(Ok(()))
        ));
        let missing = json!({"number": "SK1"});
        let err = check_payload::<FlightEvent>(&up, "FlightScheduled", 2, &missing)
            .expect("a type of the enum")
            .unwrap_err();
        assert!(
            err.to_string().contains("missing field `seatCapacity`"),
            "{err}"
        );
        assert!(matches!(
            check_payload::<FlightEvent>(&up, "FlightScheduled", 1, &good),
            Some(Err(DecodeError::SchemaVersion { .. }))
        ));
        assert!(check_payload::<FlightEvent>(&up, "SomethingElse", 1, &good).is_none());
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_a_typed_error() {
        let bad = NewEvent::new("FlightScheduled", json!({"number": 1})).with_schema_version(2);
        let err = decode_event::<FlightEvent>(&Upcasters::new(), &recorded(bad)).unwrap_err();
        assert!(matches!(err, DecodeError::Payload { .. }), "{err}");
    }
}
