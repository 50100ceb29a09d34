//! The RES-Service protocol: what a gateway and a service say over the
//! messaging system (NATS), so that a Cairn service can answer a Cairn
//! gateway, or Resgate, and a Cairn gateway can ask any RES service.
//!
//! - Requests go to `access.<name>`, `get.<name>`, `call.<name>.<method>`
//!   and `auth.<name>.<method>` ([`ServiceSubject`]), with a JSON payload
//!   ([`AccessRequest`], [`GetRequest`], [`CallRequest`], [`AuthRequest`]).
//! - A response is a `result`, a `resource` reference or an `error`
//!   ([`ServiceResponse`]); a pre-response `timeout:"ms"` extends the wait.
//! - Events: `event.<name>.<event>` on a resource ([`ServiceEvent`]),
//!   `conn.<cid>.token`, `system.reset` and `system.tokenReset`
//!   ([`SystemEvent`]), with resource name patterns (`*`, `>`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::{ResError, Resource, Rid, Value, rid::is_valid_part};

/// The type of a request to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceRequestKind {
    Access,
    Get,
    Call,
    Auth,
}

/// A request's subject: its type, the resource name, and for `call` and
/// `auth` the method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceSubject {
    pub kind: ServiceRequestKind,
    /// The resource name (a query travels in the payload).
    pub name: String,
    pub method: Option<String>,
}

impl ServiceSubject {
    pub fn access(rid: &Rid) -> Self {
        Self::new(ServiceRequestKind::Access, rid, None)
    }

    pub fn get(rid: &Rid) -> Self {
        Self::new(ServiceRequestKind::Get, rid, None)
    }

    pub fn call(rid: &Rid, method: &str) -> Self {
        Self::new(ServiceRequestKind::Call, rid, Some(method))
    }

    pub fn auth(rid: &Rid, method: &str) -> Self {
        Self::new(ServiceRequestKind::Auth, rid, Some(method))
    }

    fn new(kind: ServiceRequestKind, rid: &Rid, method: Option<&str>) -> Self {
        Self {
            kind,
            name: rid.name().to_owned(),
            method: method.map(str::to_owned),
        }
    }

    /// Reads a subject a service received.
    pub fn parse(subject: &str) -> Result<Self, ResError> {
        let (kind, rest) = subject
            .split_once('.')
            .ok_or_else(|| ResError::invalid_request(format!("{subject:?} is no request")))?;
        let kind = match kind {
            "access" => ServiceRequestKind::Access,
            "get" => ServiceRequestKind::Get,
            "call" => ServiceRequestKind::Call,
            "auth" => ServiceRequestKind::Auth,
            _ => {
                return Err(ResError::invalid_request(format!(
                    "{subject:?} is no request"
                )));
            }
        };
        let (name, method) = match kind {
            ServiceRequestKind::Call | ServiceRequestKind::Auth => {
                let (name, method) = rest.rsplit_once('.').ok_or_else(|| {
                    ResError::invalid_request(format!("{subject:?} names no method"))
                })?;
                if !is_valid_part(method) {
                    return Err(ResError::invalid_request(format!(
                        "{subject:?} names no method"
                    )));
                }
                (name, Some(method.to_owned()))
            }
            _ => (rest, None),
        };
        let rid = Rid::parse(name)?;
        if rid.query().is_some() {
            return Err(ResError::invalid_request(
                "a query travels in the payload, not the subject",
            ));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
            method,
        })
    }

    /// The subject as sent.
    pub fn to_subject(&self) -> String {
        let kind = match self.kind {
            ServiceRequestKind::Access => "access",
            ServiceRequestKind::Get => "get",
            ServiceRequestKind::Call => "call",
            ServiceRequestKind::Auth => "auth",
        };
        match &self.method {
            Some(method) => format!("{kind}.{}.{method}", self.name),
            None => format!("{kind}.{}", self.name),
        }
    }
}

/// `access.<name>`: what may this connection do with the resource?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequest {
    pub cid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_http: bool,
}

/// `get.<name>`: the resource as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `call.<name>.<method>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRequest {
    pub cid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Json>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_http: bool,
}

/// `auth.<name>.<method>`: a call that needs no access, with what the
/// connection's HTTP upgrade said.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthRequest {
    pub cid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Json>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_http: bool,
}

/// Reads a request payload; an empty payload is no parameters.
pub fn parse_payload<T: for<'de> Deserialize<'de> + Default>(
    payload: &[u8],
) -> Result<T, ResError> {
    if payload.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(payload)
        .map_err(|e| ResError::invalid_params(format!("not a request payload: {e}")))
}

/// The result of an access request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Access {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub get: bool,
    /// `"*"`, or the methods that may be called, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
}

impl Access {
    /// Whether `method` may be called.
    pub fn allows_call(&self, method: &str) -> bool {
        self.call
            .as_deref()
            .is_some_and(|call| call == "*" || call.split(',').any(|m| m.trim() == method))
    }
}

/// The result of a get request: the resource, and for a query resource
/// its normalized query.
#[derive(Debug, Clone, PartialEq)]
pub struct GetResult {
    pub resource: Resource,
    pub query: Option<String>,
}

impl GetResult {
    /// Reads a service's `result` for a get request.
    pub fn parse(result: Json) -> Result<Self, ResError> {
        let Json::Object(mut object) = result else {
            return Err(ResError::internal_error());
        };
        let query = match object.remove("query") {
            None | Some(Json::Null) => None,
            Some(Json::String(query)) => Some(query),
            Some(_) => return Err(ResError::internal_error()),
        };
        let resource = match (object.remove("model"), object.remove("collection")) {
            (Some(Json::Object(model)), None) => Resource::Model(
                model
                    .into_iter()
                    .map(|(k, v)| Value::parse(v).map(|v| (k, v)))
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(Json::Array(values))) => Resource::Collection(
                values
                    .into_iter()
                    .map(Value::parse)
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(ResError::internal_error()),
        };
        Ok(Self { resource, query })
    }

    /// The `result` a service answers a get request with.
    pub fn to_json(&self) -> Json {
        let mut object = Map::new();
        match &self.resource {
            Resource::Model(model) => {
                object.insert(
                    "model".into(),
                    serde_json::to_value(model).unwrap_or_default(),
                );
            }
            Resource::Collection(values) => {
                object.insert(
                    "collection".into(),
                    serde_json::to_value(values).unwrap_or_default(),
                );
            }
        }
        if let Some(query) = &self.query {
            object.insert("query".into(), Json::String(query.clone()));
        }
        Json::Object(object)
    }
}

/// What a service answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceResponse {
    Result(Json),
    /// A `call` or `auth` that answers a resource.
    Resource(Rid),
    Error(ResError),
    /// Not yet the answer: wait up to this many milliseconds more.
    PreResponse {
        timeout_ms: u64,
    },
}

impl ServiceResponse {
    /// Reads a response message. A message that is neither a response nor
    /// a pre-response is `system.internalError` (the service is at fault,
    /// not the client).
    pub fn parse(message: &[u8]) -> Self {
        if let Some(timeout_ms) = pre_response(message) {
            return ServiceResponse::PreResponse { timeout_ms };
        }
        let Ok(Json::Object(mut object)) = serde_json::from_slice::<Json>(message) else {
            return ServiceResponse::Error(ResError::internal_error());
        };
        if let Some(error) = object.remove("error") {
            return match serde_json::from_value::<ResError>(error) {
                Ok(error) => ServiceResponse::Error(error),
                Err(_) => ServiceResponse::Error(ResError::internal_error()),
            };
        }
        if let Some(resource) = object.remove("resource") {
            return match Value::parse(resource) {
                Ok(Value::Reference { rid, .. }) => ServiceResponse::Resource(rid),
                _ => ServiceResponse::Error(ResError::internal_error()),
            };
        }
        match object.remove("result") {
            Some(result) => ServiceResponse::Result(result),
            None => ServiceResponse::Error(ResError::internal_error()),
        }
    }

    /// The message as sent.
    pub fn to_json(&self) -> String {
        match self {
            ServiceResponse::Result(result) => json!({ "result": result }).to_string(),
            ServiceResponse::Resource(rid) => {
                json!({ "resource": { "rid": rid.to_string() } }).to_string()
            }
            ServiceResponse::Error(error) => json!({ "error": error }).to_string(),
            ServiceResponse::PreResponse { timeout_ms } => format!("timeout:\"{timeout_ms}\""),
        }
    }
}

/// `timeout:"15000"` -> 15000.
fn pre_response(message: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(message).ok()?;
    let value = text.strip_prefix("timeout:\"")?.strip_suffix('"')?;
    value.parse().ok()
}

/// An event on a resource, as a service publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEvent {
    /// The resource name (events carry no query).
    pub name: String,
    pub event: String,
    pub payload: Option<Json>,
}

impl ServiceEvent {
    /// `event.<name>.<event>`.
    pub fn subject(&self) -> String {
        format!("event.{}.{}", self.name, self.event)
    }

    /// Reads an event from its subject and payload.
    pub fn parse(subject: &str, payload: &[u8]) -> Result<Self, ResError> {
        let rest = subject
            .strip_prefix("event.")
            .ok_or_else(|| ResError::invalid_request(format!("{subject:?} is no event")))?;
        let (name, event) = rest
            .rsplit_once('.')
            .ok_or_else(|| ResError::invalid_request(format!("{subject:?} names no event")))?;
        let rid = Rid::parse(name)?;
        if rid.query().is_some() || !is_valid_part(event) {
            return Err(ResError::invalid_request(format!(
                "{subject:?} is no event"
            )));
        }
        let payload = if payload.is_empty() {
            None
        } else {
            Some(
                serde_json::from_slice(payload)
                    .map_err(|e| ResError::invalid_params(format!("an event payload: {e}")))?,
            )
        };
        Ok(Self {
            name: name.to_owned(),
            event: event.to_owned(),
            payload,
        })
    }
}

/// Connection and system events, told apart by their subjects.
#[derive(Debug, Clone, PartialEq)]
pub enum SystemEvent {
    /// `system.reset`: get again the resources matching `resources`, ask
    /// access again for those matching `access`.
    Reset {
        resources: Vec<String>,
        access: Vec<String>,
    },
    /// `system.tokenReset`: the connections holding these token ids are to
    /// be authenticated again at `subject`.
    TokenReset { tids: Vec<String>, subject: String },
    /// `conn.<cid>.token`: the connection's token (`None` clears it).
    Token {
        cid: String,
        token: Option<Json>,
        tid: Option<String>,
    },
}

#[derive(Deserialize)]
struct ResetPayload {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    access: Vec<String>,
}

#[derive(Deserialize)]
struct TokenResetPayload {
    tids: Vec<String>,
    subject: String,
}

#[derive(Deserialize)]
struct TokenPayload {
    token: Option<Json>,
    #[serde(default)]
    tid: Option<String>,
}

impl SystemEvent {
    /// Reads a connection or system event; `None` for a subject that is
    /// neither.
    pub fn parse(subject: &str, payload: &[u8]) -> Option<Result<Self, ResError>> {
        fn read<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ResError> {
            serde_json::from_slice(payload)
                .map_err(|e| ResError::invalid_params(format!("an event payload: {e}")))
        }
        if subject == "system.reset" {
            return Some(read::<ResetPayload>(payload).map(|p| SystemEvent::Reset {
                resources: p.resources,
                access: p.access,
            }));
        }
        if subject == "system.tokenReset" {
            return Some(
                read::<TokenResetPayload>(payload).map(|p| SystemEvent::TokenReset {
                    tids: p.tids,
                    subject: p.subject,
                }),
            );
        }
        let cid = subject.strip_prefix("conn.")?.strip_suffix(".token")?;
        if !is_valid_part(cid) {
            return None;
        }
        Some(read::<TokenPayload>(payload).map(|p| SystemEvent::Token {
            cid: cid.to_owned(),
            token: p.token,
            tid: p.tid,
        }))
    }

    /// The subject and payload as sent.
    pub fn to_message(&self) -> (String, String) {
        match self {
            SystemEvent::Reset { resources, access } => (
                "system.reset".into(),
                json!({ "resources": resources, "access": access }).to_string(),
            ),
            SystemEvent::TokenReset { tids, subject } => (
                "system.tokenReset".into(),
                json!({ "tids": tids, "subject": subject }).to_string(),
            ),
            SystemEvent::Token { cid, token, tid } => {
                let mut payload = json!({ "token": token });
                if let Some(tid) = tid {
                    payload["tid"] = Json::String(tid.clone());
                }
                (format!("conn.{cid}.token"), payload.to_string())
            }
        }
    }
}

/// Whether resource name `name` matches `pattern`: parts match one for
/// one, `*` matches any one part, and `>` as the last part matches one or
/// more parts.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let mut names = name.split('.');
    let mut patterns = pattern.split('.').peekable();
    while let Some(p) = patterns.next() {
        if p == ">" && patterns.peek().is_none() {
            return names.next().is_some();
        }
        match names.next() {
            Some(n) if p == "*" || p == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

/// A resource as Cairn's services name it on the messaging system: the
/// tenant second, after the service (`flights.flight.7` of `acme` is
/// `flights.acme.flight.7`), so that what one tenant holds never mixes
/// with another's, in a gateway's cache or in the events it hears. The
/// query stays as it is.
pub fn to_wire(rid: &Rid, tenant: &str) -> Result<Rid, ResError> {
    let name = rid.name();
    let (service, rest) = match name.split_once('.') {
        Some((service, rest)) => (service, Some(rest)),
        None => (name, None),
    };
    let wire = match (rest, rid.query()) {
        (Some(rest), Some(q)) => format!("{service}.{tenant}.{rest}?{q}"),
        (Some(rest), None) => format!("{service}.{tenant}.{rest}"),
        (None, Some(q)) => format!("{service}.{tenant}?{q}"),
        (None, None) => format!("{service}.{tenant}"),
    };
    Rid::parse(&wire)
}

/// The tenant and the resource of a name on the messaging system; see
/// [`to_wire`]. A name without a tenant part is not found.
pub fn from_wire(rid: &Rid) -> Result<(String, Rid), ResError> {
    let mut parts = rid.name().splitn(3, '.');
    let (Some(service), Some(tenant)) = (parts.next(), parts.next()) else {
        return Err(ResError::not_found());
    };
    let mut local = service.to_owned();
    if let Some(rest) = parts.next() {
        local.push('.');
        local.push_str(rest);
    }
    if let Some(query) = rid.query() {
        local.push('?');
        local.push_str(query);
    }
    Ok((tenant.to_owned(), Rid::parse(&local)?))
}

/// A pattern on the wire (`flights.*.flight.>`, in a `system.reset`) as
/// the tenant it is for (None when its tenant part is a wildcard: every
/// tenant) and the pattern of local names. None for a pattern across
/// services (its first part a wildcard) or one that is no pattern of
/// names.
pub fn pattern_from_wire(pattern: &str) -> Option<(Option<String>, String)> {
    let parts: Vec<&str> = pattern.split('.').collect();
    let last = parts.len() - 1;
    let valid = parts
        .iter()
        .enumerate()
        .all(|(i, p)| crate::rid::is_valid_part(p) || *p == "*" || (*p == ">" && i == last));
    let (service, tenant) = (parts.first()?, parts.get(1)?);
    if !valid || matches!(*service, "*" | ">") {
        return None;
    }
    let mut local = (*service).to_owned();
    if *tenant == ">" {
        local.push_str(".>");
        return Some((None, local));
    }
    for part in &parts[2..] {
        local.push('.');
        local.push_str(part);
    }
    let tenant = (*tenant != "*").then(|| (*tenant).to_owned());
    Some((tenant, local))
}

/// [`from_wire`] of a resource that must be of `tenant`: a reference to
/// another tenant's resource is the service's fault.
pub fn from_wire_in(rid: &Rid, tenant: &str) -> Result<Rid, ResError> {
    match from_wire(rid) {
        Ok((t, local)) if t == tenant => Ok(local),
        _ => Err(ResError::internal_error()),
    }
}

/// `resource` with every reference it holds renamed by `rename`.
pub fn rename_references(
    resource: Resource,
    rename: impl Fn(&Rid) -> Result<Rid, ResError>,
) -> Result<Resource, ResError> {
    let value = |value: Value| match value {
        Value::Reference { rid, soft } => Ok(Value::Reference {
            rid: rename(&rid)?,
            soft,
        }),
        other => Ok(other),
    };
    Ok(match resource {
        Resource::Model(model) => Resource::Model(
            model
                .into_iter()
                .map(|(k, v)| value(v).map(|v| (k, v)))
                .collect::<Result<_, ResError>>()?,
        ),
        Resource::Collection(values) => Resource::Collection(
            values
                .into_iter()
                .map(value)
                .collect::<Result<_, ResError>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(text: &str) -> Rid {
        Rid::parse(text).unwrap()
    }

    #[test]
    fn wire_patterns_give_their_tenant_and_local_pattern() {
        let some = |t: &str, l: &str| Some((Some(t.to_owned()), l.to_owned()));
        let every = |l: &str| Some((None, l.to_owned()));
        assert_eq!(
            pattern_from_wire("flights.acme.flight.*"),
            some("acme", "flights.flight.*")
        );
        assert_eq!(
            pattern_from_wire("flights.*.flight.7"),
            every("flights.flight.7")
        );
        assert_eq!(pattern_from_wire("flights.>"), every("flights.>"));
        assert_eq!(
            pattern_from_wire("flights.acme.>"),
            some("acme", "flights.>")
        );
        for across in [
            "*.acme.flight.7",
            ">",
            "flights",
            "flights.acme.>.x",
            "flights..x",
        ] {
            assert_eq!(pattern_from_wire(across), None, "{across}");
        }
    }

    #[test]
    fn the_tenant_goes_second_on_the_wire_and_comes_back() {
        for (local, wire) in [
            ("flights.flight.7", "flights.acme.flight.7"),
            (
                "flights.flights?status=Departed",
                "flights.acme.flights?status=Departed",
            ),
            ("audit", "audit.acme"),
        ] {
            assert_eq!(to_wire(&rid(local), "acme").unwrap(), rid(wire));
            assert_eq!(
                from_wire(&rid(wire)).unwrap(),
                ("acme".to_owned(), rid(local))
            );
        }
        assert_eq!(
            from_wire(&rid("flights")).unwrap_err().code,
            "system.notFound"
        );
        assert_eq!(
            from_wire_in(&rid("flights.globex.flight.7"), "acme")
                .unwrap_err()
                .code,
            "system.internalError"
        );
        let model = Resource::Model(
            [
                ("n".to_owned(), Value::Primitive(json!(1))),
                (
                    "f".to_owned(),
                    Value::soft_reference(rid("flights.acme.flight.7")),
                ),
            ]
            .into(),
        );
        let renamed = rename_references(model, |r| from_wire_in(r, "acme")).unwrap();
        let Resource::Model(renamed) = renamed else {
            panic!("a model stays a model")
        };
        assert_eq!(renamed["f"], Value::soft_reference(rid("flights.flight.7")));
        assert_eq!(renamed["n"], Value::Primitive(json!(1)));
        let collection =
            Resource::Collection(vec![Value::reference(rid("flights.globex.flight.7"))]);
        assert!(rename_references(collection, |r| from_wire_in(r, "acme")).is_err());
    }

    #[test]
    fn subjects_are_built_and_read_back() {
        let flight = rid("flights.flight.7?x=1");
        for (subject, text) in [
            (ServiceSubject::access(&flight), "access.flights.flight.7"),
            (ServiceSubject::get(&flight), "get.flights.flight.7"),
            (
                ServiceSubject::call(&flight, "depart"),
                "call.flights.flight.7.depart",
            ),
            (
                ServiceSubject::auth(&rid("identity.session"), "login"),
                "auth.identity.session.login",
            ),
        ] {
            assert_eq!(subject.to_subject(), text);
            assert_eq!(ServiceSubject::parse(text).unwrap(), subject);
        }
        for bad in [
            "flights.flight.7",
            "get",
            "get.",
            "publish.a.b",
            "call.flights",
            "call.flights.",
            "get.a?q=1",
            "access.a..b",
        ] {
            assert!(ServiceSubject::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payloads_use_the_protocol_names_and_leave_out_what_is_absent() {
        let call = CallRequest {
            cid: "c1".into(),
            token: Some(json!({"sub": "u"})),
            query: None,
            params: Some(json!({"at": 1})),
            is_http: false,
        };
        assert_eq!(
            serde_json::to_value(&call).unwrap(),
            json!({"cid": "c1", "token": {"sub": "u"}, "params": {"at": 1}})
        );
        let auth: AuthRequest = parse_payload(
            br#"{"cid":"c2","isHttp":true,"remoteAddr":"1.2.3.4","header":{"Cookie":["a=b"]}}"#,
        )
        .unwrap();
        assert!(auth.is_http);
        assert_eq!(auth.remote_addr.as_deref(), Some("1.2.3.4"));
        assert_eq!(auth.header["Cookie"], vec!["a=b".to_owned()]);
        let get: GetRequest = parse_payload(b"").unwrap();
        assert_eq!(get, GetRequest::default());
        assert_eq!(
            parse_payload::<AccessRequest>(b"not json")
                .unwrap_err()
                .code,
            "system.invalidParams"
        );
    }

    #[test]
    fn access_names_the_methods_that_may_be_called() {
        let access = Access {
            get: true,
            call: Some("depart, land".into()),
        };
        assert!(access.allows_call("depart") && access.allows_call("land"));
        assert!(!access.allows_call("delete"));
        assert!(
            Access {
                get: false,
                call: Some("*".into())
            }
            .allows_call("anything")
        );
        assert!(!Access::default().allows_call("depart"));
        assert_eq!(serde_json::to_value(Access::default()).unwrap(), json!({}));
    }

    #[test]
    fn get_results_round_trip_and_bad_ones_are_the_services_fault() {
        let result = json!({"model": {"number": "SK1", "list": {"rid": "flights.flights"}}});
        let got = GetResult::parse(result.clone()).unwrap();
        assert!(matches!(got.resource, Resource::Model(_)));
        assert_eq!(got.to_json(), result);
        let result = json!({"collection": [{"rid": "flights.flight.1"}, 2], "query": "status=a"});
        let got = GetResult::parse(result.clone()).unwrap();
        assert_eq!(got.query.as_deref(), Some("status=a"));
        assert_eq!(got.to_json(), result);
        for bad in [
            json!([]),
            json!({}),
            json!({"model": {}, "collection": []}),
            json!({"model": []}),
            json!({"collection": [[1]]}),
            json!({"model": {}, "query": 1}),
        ] {
            assert!(GetResult::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_are_read_and_written() {
        for response in [
            ServiceResponse::Result(json!({"id": "f1"})),
            ServiceResponse::Result(Json::Null),
            ServiceResponse::Resource(rid("flights.flight.7")),
            ServiceResponse::Error(ResError::method_not_found()),
            ServiceResponse::PreResponse { timeout_ms: 15000 },
        ] {
            assert_eq!(
                ServiceResponse::parse(response.to_json().as_bytes()),
                response
            );
        }
        assert_eq!(
            ServiceResponse::parse(br#"{"error":{"code":"x.y","message":"m"},"result":1}"#),
            ServiceResponse::Error(ResError::new("x.y", "m"))
        );
        for bad in [
            &b"nonsense"[..],
            b"[]",
            b"{}",
            br#"{"resource":{"data":1}}"#,
            br#"{"error":"x"}"#,
            b"timeout:\"x\"",
        ] {
            assert_eq!(
                ServiceResponse::parse(bad),
                ServiceResponse::Error(ResError::internal_error()),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn events_are_read_from_subject_and_payload() {
        let event = ServiceEvent::parse(
            "event.flights.flight.7.change",
            br#"{"values":{"status":"departed"}}"#,
        )
        .unwrap();
        assert_eq!(event.name, "flights.flight.7");
        assert_eq!(event.event, "change");
        assert_eq!(event.subject(), "event.flights.flight.7.change");
        let event = ServiceEvent::parse("event.flights.flight.7.reaccess", b"").unwrap();
        assert_eq!(event.payload, None);
        for (subject, payload) in [
            ("flights.flight.7.change", &b""[..]),
            ("event.flights", b""),
            ("event.flights.", b""),
            ("event.a?q.change", b""),
            ("event.a.b.change", b"{not json"),
        ] {
            assert!(ServiceEvent::parse(subject, payload).is_err(), "{subject}");
        }
    }

    #[test]
    fn system_events_are_told_apart_by_their_subjects() {
        for event in [
            SystemEvent::Reset {
                resources: vec!["flights.>".into()],
                access: vec!["audit.log".into()],
            },
            SystemEvent::TokenReset {
                tids: vec!["42".into()],
                subject: "auth.identity.renew".into(),
            },
            SystemEvent::Token {
                cid: "c1".into(),
                token: Some(json!({"sub": "u"})),
                tid: Some("42".into()),
            },
            SystemEvent::Token {
                cid: "c1".into(),
                token: None,
                tid: None,
            },
        ] {
            let (subject, payload) = event.to_message();
            assert_eq!(
                SystemEvent::parse(&subject, payload.as_bytes())
                    .unwrap()
                    .unwrap(),
                event
            );
        }
        assert_eq!(
            SystemEvent::parse("system.reset", b"{}").unwrap().unwrap(),
            SystemEvent::Reset {
                resources: vec![],
                access: vec![]
            }
        );
        assert!(
            SystemEvent::parse("system.tokenReset", b"{}")
                .unwrap()
                .is_err()
        );
        // A token left out clears it, as a null one does.
        assert_eq!(
            SystemEvent::parse("conn.c1.token", b"{}").unwrap().unwrap(),
            SystemEvent::Token {
                cid: "c1".into(),
                token: None,
                tid: None
            }
        );
        assert!(SystemEvent::parse("conn.c1.token", b"[]").unwrap().is_err());
        assert!(SystemEvent::parse("event.a.change", b"{}").is_none());
        assert!(SystemEvent::parse("conn..token", b"{}").is_none());
    }

    #[test]
    fn patterns_match_as_the_protocol_says() {
        for (pattern, name, matches) in [
            ("flights.flights", "flights.flights", true),
            ("flights.flight.*", "flights.flight.7", true),
            ("flights.flight.*", "flights.flight.7.passengers", false),
            ("flights.*.7", "flights.flight.7", true),
            ("flights.>", "flights.flight.7", true),
            ("flights.>", "flights", false),
            ("flights.>", "passengers.flight.7", false),
            (">", "anything.at.all", true),
            ("flights.flight", "flights.flight.7", false),
            ("flights.flight.7", "flights.flight", false),
        ] {
            assert_eq!(
                matches_pattern(pattern, name),
                matches,
                "{pattern} ~ {name}"
            );
        }
    }
}
