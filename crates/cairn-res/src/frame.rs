//! The frames of the RES-Client protocol: requests read from a client,
//! responses and events written to it.
//!
//! A request is `{"id": …, "method": "<type>.<rid>[.<method>]", "params":
//! …}`. Batches and notifications (no `id`) are not part of the protocol;
//! a frame that is not a request is answered with `system.invalidRequest`
//! and `"id": null`, as JSON-RPC answers what it cannot read, and the
//! connection goes on.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value as Json, json};

use crate::{PROTOCOL, ResError, ResourceSet, Rid, Value, rid::is_valid_part};

/// A client's request, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's id for it, echoed in the response.
    pub id: Json,
    pub kind: RequestKind,
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    /// The client's protocol version, when it says one.
    Version {
        protocol: Option<String>,
    },
    Subscribe {
        rid: Rid,
    },
    Unsubscribe {
        rid: Rid,
        count: u64,
    },
    Get {
        rid: Rid,
    },
    Call {
        rid: Rid,
        method: String,
        params: Json,
    },
    Auth {
        rid: Rid,
        method: String,
        params: Json,
    },
}

impl Request {
    /// Reads one frame. On error, what to answer: the request's id when it
    /// could be read (else `null`) and the error.
    pub fn parse(frame: &[u8]) -> Result<Self, (Json, ResError)> {
        let value: Json = serde_json::from_slice(frame).map_err(|e| {
            (
                Json::Null,
                ResError::invalid_request(format!("not JSON: {e}")),
            )
        })?;
        let Json::Object(mut object) = value else {
            return Err((
                Json::Null,
                ResError::invalid_request("a request is a JSON object (no batches)"),
            ));
        };
        let id = match object.remove("id") {
            Some(id @ (Json::Number(_) | Json::String(_))) => id,
            Some(_) => {
                return Err((
                    Json::Null,
                    ResError::invalid_request("a request's id is a number or a string"),
                ));
            }
            None => {
                return Err((
                    Json::Null,
                    ResError::invalid_request("a request needs an id (no notifications)"),
                ));
            }
        };
        let fail = |error: ResError| (id.clone(), error);
        let method = match object.remove("method") {
            Some(Json::String(method)) => method,
            _ => return Err(fail(ResError::invalid_request("a request needs a method"))),
        };
        let params = object.remove("params").unwrap_or(Json::Null);
        let kind = kind_of(&method, params).map_err(fail)?;
        Ok(Self { id, kind })
    }
}

fn kind_of(method: &str, params: Json) -> Result<RequestKind, ResError> {
    let Some((kind, rest)) = method.split_once('.') else {
        return match method {
            "version" => Ok(RequestKind::Version {
                protocol: version_param(params)?,
            }),
            _ => Err(ResError::invalid_request(format!(
                "unknown request {method:?}"
            ))),
        };
    };
    match kind {
        "subscribe" => Ok(RequestKind::Subscribe {
            rid: Rid::parse(rest)?,
        }),
        "get" => Ok(RequestKind::Get {
            rid: Rid::parse(rest)?,
        }),
        "unsubscribe" => Ok(RequestKind::Unsubscribe {
            rid: Rid::parse(rest)?,
            count: count_param(params)?,
        }),
        "call" | "auth" => {
            // The method is the last part: a query may hold dots, a method
            // never does.
            let (rid, name) = rest
                .rsplit_once('.')
                .ok_or_else(|| ResError::invalid_request(format!("{method:?} names no method")))?;
            if !is_valid_part(name) {
                return Err(ResError::invalid_request(format!(
                    "{name:?} is not a method name"
                )));
            }
            let rid = Rid::parse(rid)?;
            let method = name.to_owned();
            Ok(if kind == "call" {
                RequestKind::Call {
                    rid,
                    method,
                    params,
                }
            } else {
                RequestKind::Auth {
                    rid,
                    method,
                    params,
                }
            })
        }
        "new" => Err(ResError::invalid_request(
            "new requests are not supported: use a call request",
        )),
        _ => Err(ResError::invalid_request(format!(
            "unknown request type {kind:?}"
        ))),
    }
}

fn version_param(params: Json) -> Result<Option<String>, ResError> {
    match params {
        Json::Null => Ok(None),
        Json::Object(mut object) => match object.remove("protocol") {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(protocol)) => Ok(Some(protocol)),
            Some(_) => Err(ResError::invalid_params("protocol is a string")),
        },
        _ => Err(ResError::invalid_params("version takes an object")),
    }
}

fn count_param(params: Json) -> Result<u64, ResError> {
    let count = match params {
        Json::Null => return Ok(1),
        Json::Object(mut object) => object.remove("count"),
        _ => return Err(ResError::invalid_params("unsubscribe takes an object")),
    };
    match count {
        None | Some(Json::Null) => Ok(1),
        Some(count) => count
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| ResError::invalid_params("count is a number greater than 0")),
    }
}

/// Answers a client's `version`: the version this side speaks, or
/// `system.unsupportedProtocol` for a client of another major version.
/// A client that says none is taken to speak 1.1, which is served.
pub fn check_version(client: Option<&str>) -> Result<&'static str, ResError> {
    let Some(client) = client else {
        return Ok(PROTOCOL);
    };
    let parts: Vec<u64> = client
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| ResError::invalid_params("protocol is \"MAJOR.MINOR.PATCH\""))?;
    match parts.as_slice() {
        [1, _, _] => Ok(PROTOCOL),
        [_, _, _] => Err(ResError::unsupported_protocol()),
        _ => Err(ResError::invalid_params(
            "protocol is \"MAJOR.MINOR.PATCH\"",
        )),
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Result { id: Json, result: Json },
    Error { id: Json, error: ResError },
}

impl Response {
    pub fn result(id: Json, result: impl Serialize) -> Self {
        Response::Result {
            id,
            result: serde_json::to_value(result).unwrap_or(Json::Null),
        }
    }

    pub fn error(id: Json, error: ResError) -> Self {
        Response::Error { id, error }
    }

    /// The result of `subscribe` and `get`: the resources the client did
    /// not hold yet.
    pub fn resources(id: Json, set: &ResourceSet) -> Self {
        Self::result(id, set)
    }

    /// The result of a `call` or `auth` that answers a payload.
    pub fn payload(id: Json, payload: Json) -> Self {
        Self::result(id, json!({ "payload": payload }))
    }

    /// The result of a `call` or `auth` that answers a resource, which the
    /// client now subscribes to directly.
    pub fn resource(id: Json, rid: &Rid, set: &ResourceSet) -> Self {
        let mut result = match serde_json::to_value(set) {
            Ok(Json::Object(map)) => map,
            _ => Map::new(),
        };
        result.insert("rid".into(), Json::String(rid.to_string()));
        Self::result(id, Json::Object(result))
    }

    /// The frame as text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a response is JSON")
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        match self {
            Response::Result { id, result } => {
                map.serialize_entry("result", result)?;
                map.serialize_entry("id", id)?;
            }
            Response::Error { id, error } => {
                map.serialize_entry("error", error)?;
                map.serialize_entry("id", id)?;
            }
        }
        map.end()
    }
}

/// The names a custom event may not take: the protocol's own.
const RESERVED: [&str; 9] = [
    "add",
    "change",
    "create",
    "delete",
    "patch",
    "reset",
    "reaccess",
    "remove",
    "unsubscribe",
];

/// An event on a subscribed resource: `{"event": "<rid>.<name>", "data": …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub rid: Rid,
    pub name: String,
    pub data: Option<Json>,
}

impl Event {
    /// Properties of a model changed: each new value, or `None` for a
    /// property deleted; `set` holds the resources newly referenced.
    pub fn change(rid: Rid, values: BTreeMap<String, Option<Value>>, set: &ResourceSet) -> Self {
        let values: Map<String, Json> = values
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Some(v) => serde_json::to_value(v).unwrap_or(Json::Null),
                    None => json!({ "action": "delete" }),
                };
                (k, v)
            })
            .collect();
        let mut data = resource_fields(set);
        data.insert("values".into(), Json::Object(values));
        Self::new(rid, "change", Some(Json::Object(data)))
    }

    /// `value` was inserted into a collection at `idx`.
    pub fn add(rid: Rid, idx: usize, value: Value, set: &ResourceSet) -> Self {
        let mut data = resource_fields(set);
        data.insert("idx".into(), json!(idx));
        data.insert(
            "value".into(),
            serde_json::to_value(value).unwrap_or(Json::Null),
        );
        Self::new(rid, "add", Some(Json::Object(data)))
    }

    /// The value at `idx` was removed from a collection.
    pub fn remove(rid: Rid, idx: usize) -> Self {
        Self::new(rid, "remove", Some(json!({ "idx": idx })))
    }

    /// The client may no longer hold the resource directly, because of
    /// `reason` (typically `system.accessDenied`).
    pub fn unsubscribe(rid: Rid, reason: ResError) -> Self {
        Self::new(rid, "unsubscribe", Some(json!({ "reason": reason })))
    }

    /// The resource is gone; no more events come on it.
    pub fn delete(rid: Rid) -> Self {
        Self::new(rid, "delete", None)
    }

    /// An event the service defines, which never changes the resource.
    pub fn custom(rid: Rid, name: &str, data: Json) -> Result<Self, ResError> {
        if RESERVED.contains(&name) || !is_valid_part(name) {
            return Err(ResError::invalid_params(format!(
                "{name:?} cannot name a custom event"
            )));
        }
        Ok(Self::new(rid, name, Some(data)))
    }

    fn new(rid: Rid, name: &str, data: Option<Json>) -> Self {
        Self {
            rid,
            name: name.to_owned(),
            data,
        }
    }

    /// The frame as text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event is JSON")
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("event", &format!("{}.{}", self.rid, self.name))?;
        if let Some(data) = &self.data {
            map.serialize_entry("data", data)?;
        }
        map.end()
    }
}

fn resource_fields(set: &ResourceSet) -> Map<String, Json> {
    match serde_json::to_value(set) {
        Ok(Json::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(frame: &str) -> Result<Request, (Json, ResError)> {
        Request::parse(frame.as_bytes())
    }

    fn rid(text: &str) -> Rid {
        Rid::parse(text).unwrap()
    }

    #[test]
    fn every_request_type_is_read() {
        assert_eq!(
            parse(r#"{"id":1,"method":"version","params":{"protocol":"1.2.3"}}"#)
                .unwrap()
                .kind,
            RequestKind::Version {
                protocol: Some("1.2.3".into())
            }
        );
        assert_eq!(
            parse(r#"{"id":1,"method":"version"}"#).unwrap().kind,
            RequestKind::Version { protocol: None }
        );
        assert_eq!(
            parse(r#"{"id":2,"method":"subscribe.flights.flights?status=scheduled"}"#).unwrap(),
            Request {
                id: json!(2),
                kind: RequestKind::Subscribe {
                    rid: rid("flights.flights?status=scheduled")
                }
            }
        );
        assert_eq!(
            parse(r#"{"id":"x","method":"get.flights.flight.7"}"#)
                .unwrap()
                .kind,
            RequestKind::Get {
                rid: rid("flights.flight.7")
            }
        );
        assert_eq!(
            parse(r#"{"id":3,"method":"unsubscribe.flights.flight.7","params":{"count":2}}"#)
                .unwrap()
                .kind,
            RequestKind::Unsubscribe {
                rid: rid("flights.flight.7"),
                count: 2
            }
        );
        assert_eq!(
            parse(r#"{"id":3,"method":"unsubscribe.flights.flight.7"}"#)
                .unwrap()
                .kind,
            RequestKind::Unsubscribe {
                rid: rid("flights.flight.7"),
                count: 1
            }
        );
        assert_eq!(
            parse(r#"{"id":4,"method":"call.flights.flight.7.depart","params":{"at":1}}"#)
                .unwrap()
                .kind,
            RequestKind::Call {
                rid: rid("flights.flight.7"),
                method: "depart".into(),
                params: json!({"at": 1})
            }
        );
        // The method is the last part, even after a query with dots.
        assert_eq!(
            parse(r#"{"id":5,"method":"call.audit.log?stream=a.b.refresh"}"#)
                .unwrap()
                .kind,
            RequestKind::Call {
                rid: rid("audit.log?stream=a.b"),
                method: "refresh".into(),
                params: Json::Null
            }
        );
        assert_eq!(
            parse(r#"{"id":6,"method":"auth.identity.session.login","params":{"token":"t"}}"#)
                .unwrap()
                .kind,
            RequestKind::Auth {
                rid: rid("identity.session"),
                method: "login".into(),
                params: json!({"token": "t"})
            }
        );
    }

    #[test]
    fn bad_frames_get_an_error_with_the_id_when_there_is_one() {
        for (frame, id, code) in [
            ("not json", Json::Null, "system.invalidRequest"),
            (
                r#"[{"id":1,"method":"version"}]"#,
                Json::Null,
                "system.invalidRequest",
            ),
            (
                r#"{"method":"version"}"#,
                Json::Null,
                "system.invalidRequest",
            ),
            (
                r#"{"id":{},"method":"version"}"#,
                Json::Null,
                "system.invalidRequest",
            ),
            (r#"{"id":1}"#, json!(1), "system.invalidRequest"),
            (r#"{"id":1,"method":7}"#, json!(1), "system.invalidRequest"),
            (
                r#"{"id":1,"method":"subscribe"}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"subscribe."}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"subscribe.a..b"}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"publish.a.b"}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"new.a.b"}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"call.flights"}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"call.flights."}"#,
                json!(1),
                "system.invalidRequest",
            ),
            (
                r#"{"id":1,"method":"unsubscribe.a.b","params":{"count":0}}"#,
                json!(1),
                "system.invalidParams",
            ),
            (
                r#"{"id":1,"method":"unsubscribe.a.b","params":{"count":-1}}"#,
                json!(1),
                "system.invalidParams",
            ),
            (
                r#"{"id":1,"method":"unsubscribe.a.b","params":[1]}"#,
                json!(1),
                "system.invalidParams",
            ),
            (
                r#"{"id":1,"method":"version","params":{"protocol":12}}"#,
                json!(1),
                "system.invalidParams",
            ),
            ("", Json::Null, "system.invalidRequest"),
        ] {
            let (got_id, error) = parse(frame).unwrap_err();
            assert_eq!(got_id, id, "{frame}");
            assert_eq!(error.code, code, "{frame}: {error}");
        }
    }

    #[test]
    fn versions_of_major_one_are_served() {
        assert_eq!(check_version(None), Ok(PROTOCOL));
        assert_eq!(check_version(Some("1.2.0")), Ok(PROTOCOL));
        assert_eq!(check_version(Some("1.1.1")), Ok(PROTOCOL));
        assert_eq!(
            check_version(Some("2.0.0")).unwrap_err().code,
            "system.unsupportedProtocol"
        );
        for bad in ["1.2", "one.two.three", "1.2.3.4", ""] {
            assert_eq!(
                check_version(Some(bad)).unwrap_err().code,
                "system.invalidParams",
                "{bad}"
            );
        }
    }

    #[test]
    fn responses_are_written_as_the_protocol_says() {
        assert_eq!(
            serde_json::to_value(Response::result(json!(1), json!({"protocol": PROTOCOL})))
                .unwrap(),
            json!({"id": 1, "result": {"protocol": PROTOCOL}})
        );
        assert_eq!(
            serde_json::to_value(Response::error(json!(2), ResError::not_found())).unwrap(),
            json!({"id": 2, "error": {"code": "system.notFound", "message": "Not found"}})
        );
        assert_eq!(
            serde_json::to_value(Response::payload(json!(3), json!({"id": "f1"}))).unwrap(),
            json!({"id": 3, "result": {"payload": {"id": "f1"}}})
        );
        let flight = rid("flights.flight.7");
        let mut set = ResourceSet::default();
        set.insert(
            &flight,
            crate::Resource::model_from_json(json!({"number": "SK1"}).as_object().unwrap().clone()),
        );
        assert_eq!(
            serde_json::to_value(Response::resource(json!(4), &flight, &set)).unwrap(),
            json!({"id": 4, "result": {"rid": "flights.flight.7",
                   "models": {"flights.flight.7": {"number": "SK1"}}}})
        );
        assert_eq!(
            serde_json::to_value(Response::resources(json!(5), &ResourceSet::default())).unwrap(),
            json!({"id": 5, "result": {}})
        );
    }

    #[test]
    fn events_are_written_as_the_protocol_says() {
        let flight = rid("flights.flight.7");
        let mut values = BTreeMap::new();
        values.insert(
            "status".to_owned(),
            Some(Value::from_json(json!("departed"))),
        );
        values.insert("gate".to_owned(), None);
        assert_eq!(
            serde_json::to_value(Event::change(
                flight.clone(),
                values,
                &ResourceSet::default()
            ))
            .unwrap(),
            json!({"event": "flights.flight.7.change",
                   "data": {"values": {"status": "departed", "gate": {"action": "delete"}}}})
        );
        let list = rid("flights.flights");
        let mut set = ResourceSet::default();
        set.insert(
            &flight,
            crate::Resource::model_from_json(json!({"number": "SK1"}).as_object().unwrap().clone()),
        );
        assert_eq!(
            serde_json::to_value(Event::add(
                list.clone(),
                0,
                Value::reference(flight.clone()),
                &set
            ))
            .unwrap(),
            json!({"event": "flights.flights.add", "data": {"idx": 0,
                   "value": {"rid": "flights.flight.7"},
                   "models": {"flights.flight.7": {"number": "SK1"}}}})
        );
        assert_eq!(
            serde_json::to_value(Event::remove(list, 3)).unwrap(),
            json!({"event": "flights.flights.remove", "data": {"idx": 3}})
        );
        assert_eq!(
            serde_json::to_value(Event::unsubscribe(
                flight.clone(),
                ResError::access_denied()
            ))
            .unwrap(),
            json!({"event": "flights.flight.7.unsubscribe",
                   "data": {"reason": {"code": "system.accessDenied", "message": "Access denied"}}})
        );
        assert_eq!(
            serde_json::to_value(Event::delete(flight.clone())).unwrap(),
            json!({"event": "flights.flight.7.delete"})
        );
        assert!(Event::custom(flight.clone(), "boarded", json!({})).is_ok());
        for reserved in RESERVED {
            assert!(Event::custom(flight.clone(), reserved, json!({})).is_err());
        }
        assert!(Event::custom(flight, "a.b", json!({})).is_err());
    }
}
