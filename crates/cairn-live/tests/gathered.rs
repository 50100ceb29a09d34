//! Resources every service serves a part of (`ops.…`), over a real NATS
//! server: each service answers with `nats::serve` in a queue group of its
//! own, and `nats::Gathered` asks them all at once and puts the answers
//! together. Skipped without NATS unless `CAIRN_TEST_SERVICES=required`.

mod common;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use async_trait::async_trait;
use cairn_core::{RequestContext, TenantId};
use cairn_live::{
    Authenticate, Bearer, CallAnswer, Change, LiveOptions, Publisher, Resources, Session,
    nats::{Gathered, ServiceSide, serve},
};
use cairn_res::{ResError, Resource, Rid, Value};
use serde_json::{Value as Json, json};

const READ: &str = "projections:read";

/// One service's part: its projections and its store's head.
struct Part {
    service: &'static str,
    projections: Vec<&'static str>,
    /// Which store it keeps its events in.
    store: &'static str,
    head: u64,
    rate: f64,
}

#[async_trait]
impl Resources for Part {
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        if !ctx.has_permission(READ) {
            return Err(ResError::access_denied().with_data(json!({"code": "forbidden"})));
        }
        let parts: Vec<&str> = rid.parts().collect();
        match parts.as_slice() {
            ["ops", "store"] => Ok(model(json!({
                "id": self.store,
                "head": self.head,
                "eventsPerSecond": self.rate,
                "service": self.service,
                "tenant": ctx.tenant.as_str(),
            }))),
            ["ops", "projections"] => Ok(Resource::Collection(
                self.projections
                    .iter()
                    .map(|p| Value::reference(Rid::parse(&format!("ops.projection.{p}")).unwrap()))
                    .collect(),
            )),
            ["ops", "projection", name @ ..] if self.projections.contains(&&*name.join(".")) => Ok(
                model(json!({"name": name.join("."), "service": self.service})),
            ),
            _ => Err(ResError::not_found()),
        }
    }

    async fn call(
        &self,
        ctx: &RequestContext,
        rid: &Rid,
        method: &str,
        _params: Json,
    ) -> Result<CallAnswer, ResError> {
        self.get(ctx, rid).await?;
        match method {
            "retry" => Ok(CallAnswer::Payload(json!({"by": self.service}))),
            _ => Err(ResError::method_not_found()),
        }
    }
}

fn model(json: Json) -> Resource {
    let Json::Object(fields) = json else {
        unreachable!()
    };
    Resource::model_from_json(fields)
}

/// `reader` may read the operations, `nobody` may not; both of tenant
/// acme.
struct Tokens;

#[async_trait]
impl Authenticate for Tokens {
    async fn session(&self, token: &str, tenant: Option<&str>) -> Result<Session, ResError> {
        let permissions: BTreeSet<String> = match token {
            "reader" => [READ.to_owned()].into(),
            "nobody" => BTreeSet::new(),
            _ => return Err(ResError::access_denied()),
        };
        if tenant.is_some_and(|t| t != "acme") {
            return Err(ResError::not_found());
        }
        let mut context = RequestContext::new(TenantId::new("acme").unwrap());
        context.permissions = permissions;
        Ok(session(context, token))
    }

    async fn still_valid(&self, _session: &Session) -> Result<(), ResError> {
        Ok(())
    }
}

fn session(context: RequestContext, token: &str) -> Session {
    let mut session = Session::new(context);
    session.bearer = Some(Bearer(token.to_owned()));
    session
}

fn caller(token: &str) -> Session {
    session(RequestContext::new(TenantId::new("acme").unwrap()), token)
}

/// A prefix of this test's own, so that tests never hear each other.
fn prefix() -> String {
    format!(
        "gathered{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Serves each part as its service would, under `prefix`, until the test
/// ends or the part is shut down.
async fn start(
    client: &async_nats::Client,
    prefix: &str,
    parts: Vec<Part>,
) -> Vec<cairn_runtime::Running<cairn_live::nats::ServeStatus>> {
    let mut serving = Vec::new();
    for part in parts {
        let side = ServiceSide {
            prefix: prefix.to_owned(),
            service: "ops".to_owned(),
            group: part.service.to_owned(),
            resources: Arc::new(part),
            auth: Arc::new(Tokens),
            reader: [READ.to_owned()].into(),
        };
        // Its changes publisher is dropped at once: it still answers.
        serving.push(
            serve(client.clone(), side, &Publisher::new(4))
                .await
                .unwrap(),
        );
    }
    serving
}

fn parts() -> Vec<Part> {
    vec![
        Part {
            service: "passengers",
            projections: vec!["passengers.manifest"],
            store: "s1",
            head: 4,
            rate: 0.5,
        },
        Part {
            service: "flights",
            projections: vec!["flights.flights", "flights.board"],
            store: "s2",
            head: 3,
            rate: 1.25,
        },
    ]
}

fn rid(name: &str) -> Rid {
    Rid::parse(name).unwrap()
}

#[tokio::test]
async fn every_services_part_is_put_together() {
    let Some(client) = common::nats().await else {
        return;
    };
    let prefix = prefix();
    let _serving = start(&client, &prefix, parts()).await;
    let gathered = Gathered::new(client.clone(), &prefix, Duration::from_secs(2));
    let reader = caller("reader");

    // Collections one after the other, by service name; each value once.
    let all = gathered
        .get_as(&reader, &rid("ops.projections"))
        .await
        .unwrap();
    assert_eq!(
        cairn_res::ResourceSet::references(&all),
        ["flights.flights", "flights.board", "passengers.manifest"]
            .map(|p| rid(&format!("ops.projection.{p}")))
    );
    // Models field by field: numbers added, the rest the first service's;
    // each service read it in the caller's tenant.
    let store = gathered.get_as(&reader, &rid("ops.store")).await.unwrap();
    let Resource::Model(fields) = store else {
        panic!("a model: {store:?}")
    };
    assert_eq!(fields["head"], Value::Primitive(json!(7)));
    assert_eq!(fields["eventsPerSecond"], Value::Primitive(json!(1.75)));
    assert_eq!(fields["service"], Value::Primitive(json!("flights")));
    assert_eq!(fields["tenant"], Value::Primitive(json!("acme")));

    // Two services sharing a store count it once.
    let prefix = self::prefix();
    let mut shared = parts();
    shared[0].store = "s2";
    shared[0].head = 3;
    let _shared = start(&client, &prefix, shared).await;
    let store = Gathered::new(client.clone(), &prefix, Duration::from_secs(2))
        .get_as(&reader, &rid("ops.store"))
        .await
        .unwrap();
    let Resource::Model(fields) = store else {
        panic!("a model: {store:?}")
    };
    assert_eq!(fields["head"], Value::Primitive(json!(3)));
    assert_eq!(fields["eventsPerSecond"], Value::Primitive(json!(1.25)));

    // A resource one service owns is its answer.
    let one = gathered
        .get_as(&reader, &rid("ops.projection.passengers.manifest"))
        .await
        .unwrap();
    let Resource::Model(fields) = one else {
        panic!("a model: {one:?}")
    };
    assert_eq!(fields["service"], Value::Primitive(json!("passengers")));
    let missing = gathered
        .get_as(&reader, &rid("ops.projection.nowhere"))
        .await
        .unwrap_err();
    assert_eq!(missing.code, "system.notFound", "{missing:?}");

    // A call goes to the one that owns it.
    let answer = gathered
        .call_as(
            &reader,
            &rid("ops.projection.flights.board"),
            "retry",
            json!({}),
        )
        .await
        .unwrap();
    let CallAnswer::Payload(payload) = answer else {
        panic!("a payload")
    };
    assert_eq!(payload, json!({"by": "flights"}));
    let missing = gathered
        .call_as(&reader, &rid("ops.projection.nowhere"), "retry", json!({}))
        .await
        .unwrap_err();
    assert_eq!(missing.code, "system.notFound", "{missing:?}");
    let unknown = gathered
        .call_as(
            &reader,
            &rid("ops.projection.flights.board"),
            "explode",
            json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code, "system.methodNotFound", "{unknown:?}");
}

#[tokio::test]
async fn the_caller_is_checked_by_every_service() {
    let Some(client) = common::nats().await else {
        return;
    };
    let prefix = prefix();
    let _serving = start(&client, &prefix, parts()).await;
    let gathered = Gathered::new(client, &prefix, Duration::from_secs(2));
    for (token, code) in [
        ("nobody", "system.accessDenied"),
        ("forged", "system.accessDenied"),
    ] {
        let refused = gathered
            .get_as(&caller(token), &rid("ops.projections"))
            .await
            .unwrap_err();
        assert_eq!(refused.code, code, "{token}: {refused:?}");
        let refused = gathered
            .call_as(
                &caller(token),
                &rid("ops.projection.flights.board"),
                "retry",
                json!({}),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code, code, "{token}: {refused:?}");
    }
    // No token at all is refused before anything is asked.
    let tokenless = Session::new(RequestContext::new(TenantId::new("acme").unwrap()));
    let refused = gathered
        .get_as(&tokenless, &rid("ops.projections"))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "system.accessDenied", "{refused:?}");
}

#[tokio::test]
async fn with_no_service_nothing_is_found() {
    let Some(client) = common::nats().await else {
        return;
    };
    let gathered = Gathered::new(client, prefix(), Duration::from_secs(2));
    let missing = gathered
        .get_as(&caller("reader"), &rid("ops.projections"))
        .await
        .unwrap_err();
    assert_eq!(missing.code, "system.notFound", "{missing:?}");
}

#[tokio::test]
async fn what_was_read_is_read_again_at_each_tick() {
    let Some(client) = common::nats().await else {
        return;
    };
    let prefix = prefix();
    let _serving = start(&client, &prefix, parts()).await;
    let gathered = Arc::new(Gathered::new(client, &prefix, Duration::from_secs(2)));
    let publisher = Publisher::new(LiveOptions::default().change_buffer);
    let mut changes = publisher.subscribe();
    let _ticks = gathered.tick(publisher, Duration::from_millis(50));
    gathered
        .get_as(&caller("reader"), &rid("ops.projections"))
        .await
        .unwrap();
    // A refused read is not remembered.
    let _ = gathered
        .get_as(&caller("reader"), &rid("ops.projection.nowhere"))
        .await;
    let change = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("a tick within 5 s")
        .unwrap();
    let Change::ResetAll { names } = change else {
        panic!("only resets of all: {change:?}")
    };
    assert_eq!(
        names,
        [
            "ops.projection.flights.board",
            "ops.projection.flights.flights",
            "ops.projection.passengers.manifest",
            "ops.projections",
        ]
    );
}

#[tokio::test]
async fn a_service_gone_is_waited_for_no_longer_than_the_window() {
    let Some(client) = common::nats().await else {
        return;
    };
    let prefix = prefix();
    let mut serving = start(&client, &prefix, parts()).await;
    let gathered = Gathered::new(client, &prefix, Duration::from_millis(300));
    let reader = caller("reader");
    let both = gathered
        .get_as(&reader, &rid("ops.projections"))
        .await
        .unwrap();
    assert_eq!(cairn_res::ResourceSet::references(&both).len(), 3);
    // Passengers stops: Flights' part is still answered.
    serving.remove(0).shutdown().await;
    let left = gathered
        .get_as(&reader, &rid("ops.projections"))
        .await
        .unwrap();
    assert_eq!(
        cairn_res::ResourceSet::references(&left),
        ["flights.flights", "flights.board"].map(|p| rid(&format!("ops.projection.{p}")))
    );
}
