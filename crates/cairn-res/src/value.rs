//! Values, resources and resource sets.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Map;

use crate::{ResError, Rid};

/// A value in a model or a collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string, number, boolean or null.
    Primitive(serde_json::Value),
    /// A reference the client follows (and so subscribes), or a soft one
    /// it does not.
    Reference { rid: Rid, soft: bool },
    /// Any JSON, objects and arrays included, taken as a whole.
    Data(serde_json::Value),
}

impl Value {
    /// A JSON value as a RES value: primitives as they are, objects and
    /// arrays wrapped as data values.
    pub fn from_json(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => Value::Data(value),
            primitive => Value::Primitive(primitive),
        }
    }

    /// Reads a value as a service sends it: a primitive, `{"rid": …[,
    /// "soft": true]}` or `{"data": …}`. Any other object or an array is
    /// not a value.
    pub fn parse(json: serde_json::Value) -> Result<Self, ResError> {
        match json {
            serde_json::Value::Object(mut object) => {
                if object.len() == 1
                    && let Some(data) = object.remove("data")
                {
                    return Ok(Value::Data(data));
                }
                let soft = match object.remove("soft") {
                    None | Some(serde_json::Value::Bool(false)) => false,
                    Some(serde_json::Value::Bool(true)) => true,
                    Some(_) => return Err(ResError::invalid_params("soft is a boolean")),
                };
                match (object.remove("rid"), object.is_empty()) {
                    (Some(serde_json::Value::String(rid)), true) => Ok(Value::Reference {
                        rid: Rid::parse(&rid)?,
                        soft,
                    }),
                    _ => Err(ResError::invalid_params(
                        "an object value is a resource reference or a data value",
                    )),
                }
            }
            serde_json::Value::Array(_) => Err(ResError::invalid_params(
                "an array value must be wrapped as a data value",
            )),
            primitive => Ok(Value::Primitive(primitive)),
        }
    }

    pub fn reference(rid: Rid) -> Self {
        Value::Reference { rid, soft: false }
    }

    pub fn soft_reference(rid: Rid) -> Self {
        Value::Reference { rid, soft: true }
    }
}

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Self {
        Value::from_json(value)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Primitive(value) => value.serialize(serializer),
            Value::Reference { rid, soft } => {
                let mut map = serializer.serialize_map(Some(if *soft { 2 } else { 1 }))?;
                map.serialize_entry("rid", &rid.to_string())?;
                if *soft {
                    map.serialize_entry("soft", &true)?;
                }
                map.end()
            }
            Value::Data(value) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("data", value)?;
                map.end()
            }
        }
    }
}

/// A model (named values) or a collection (ordered values).
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Model(BTreeMap<String, Value>),
    Collection(Vec<Value>),
}

impl Resource {
    /// A model from a JSON object, each property a RES value (nested
    /// objects and arrays as data values).
    pub fn model_from_json(object: Map<String, serde_json::Value>) -> Self {
        Resource::Model(
            object
                .into_iter()
                .map(|(k, v)| (k, Value::from_json(v)))
                .collect(),
        )
    }
}

/// The resources a request or an event brings to a client, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceSet {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, BTreeMap<String, Value>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub collections: BTreeMap<String, Vec<Value>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, ResError>,
}

impl ResourceSet {
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.collections.is_empty() && self.errors.is_empty()
    }

    /// Adds `resource` under `rid`.
    pub fn insert(&mut self, rid: &Rid, resource: Resource) {
        match resource {
            Resource::Model(model) => {
                self.models.insert(rid.to_string(), model);
            }
            Resource::Collection(values) => {
                self.collections.insert(rid.to_string(), values);
            }
        }
    }

    /// Records that `rid` could not be had.
    pub fn insert_error(&mut self, rid: &Rid, error: ResError) {
        self.errors.insert(rid.to_string(), error);
    }

    /// Whether `rid` is in the set, as a resource or an error.
    pub fn contains(&self, rid: &Rid) -> bool {
        let key = rid.to_string();
        self.models.contains_key(&key)
            || self.collections.contains_key(&key)
            || self.errors.contains_key(&key)
    }

    /// The hard references of `resource`: what a client subscribing to it
    /// subscribes to as well.
    pub fn references(resource: &Resource) -> Vec<Rid> {
        let values: Box<dyn Iterator<Item = &Value>> = match resource {
            Resource::Model(model) => Box::new(model.values()),
            Resource::Collection(values) => Box::new(values.iter()),
        };
        values
            .filter_map(|v| match v {
                Value::Reference { rid, soft: false } => Some(rid.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_written_as_the_protocol_says() {
        let rid = Rid::parse("flights.flight.7").unwrap();
        assert_eq!(
            serde_json::to_value(Value::reference(rid.clone())).unwrap(),
            json!({"rid": "flights.flight.7"})
        );
        assert_eq!(
            serde_json::to_value(Value::soft_reference(rid)).unwrap(),
            json!({"rid": "flights.flight.7", "soft": true})
        );
        assert_eq!(
            serde_json::to_value(Value::from_json(json!({"a": [1]}))).unwrap(),
            json!({"data": {"a": [1]}})
        );
        assert_eq!(
            serde_json::to_value(Value::from_json(json!([1, 2]))).unwrap(),
            json!({"data": [1, 2]})
        );
        for primitive in [json!("SK1421"), json!(30), json!(true), json!(null)] {
            assert_eq!(
                serde_json::to_value(Value::from_json(primitive.clone())).unwrap(),
                primitive
            );
        }
    }

    #[test]
    fn values_from_a_service_are_read_and_written_back_the_same() {
        for json in [
            json!("x"),
            json!(1.5),
            json!(null),
            json!({"rid": "flights.flight.7"}),
            json!({"rid": "flights.flight.7", "soft": true}),
            json!({"data": {"a": 1}}),
            json!({"data": [1, 2]}),
        ] {
            let value = Value::parse(json.clone()).unwrap();
            assert_eq!(serde_json::to_value(&value).unwrap(), json);
        }
        assert_eq!(
            Value::parse(json!({"rid": "a.b", "soft": false})).unwrap(),
            Value::reference(rid_of("a.b"))
        );
        for bad in [
            json!([1]),
            json!({"a": 1}),
            json!({"rid": 7}),
            json!({"rid": "a..b"}),
            json!({"rid": "a.b", "extra": 1}),
            json!({"data": 1, "extra": 1}),
        ] {
            assert!(Value::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    fn rid_of(text: &str) -> Rid {
        Rid::parse(text).unwrap()
    }

    #[test]
    fn a_resource_set_groups_by_kind_and_leaves_out_empty_groups() {
        let mut set = ResourceSet::default();
        assert_eq!(serde_json::to_value(&set).unwrap(), json!({}));
        let flight = Rid::parse("flights.flight.7").unwrap();
        let list = Rid::parse("flights.flights?status=scheduled").unwrap();
        let gone = Rid::parse("flights.flight.8").unwrap();
        let model = Resource::model_from_json(
            json!({"number": "SK1421", "seats": {"free": 3}})
                .as_object()
                .unwrap()
                .clone(),
        );
        set.insert(&flight, model);
        let collection = Resource::Collection(vec![
            Value::reference(flight.clone()),
            Value::soft_reference(gone.clone()),
        ]);
        assert_eq!(ResourceSet::references(&collection), vec![flight.clone()]);
        set.insert(&list, collection);
        set.insert_error(&gone, ResError::not_found());
        assert!(set.contains(&flight) && set.contains(&list) && set.contains(&gone));
        assert_eq!(
            serde_json::to_value(&set).unwrap(),
            json!({
                "models": {"flights.flight.7": {"number": "SK1421", "seats": {"data": {"free": 3}}}},
                "collections": {"flights.flights?status=scheduled": [
                    {"rid": "flights.flight.7"},
                    {"rid": "flights.flight.8", "soft": true}
                ]},
                "errors": {"flights.flight.8": {"code": "system.notFound", "message": "Not found"}}
            })
        );
    }
}
