//! Flights' live resources over its real buses (with the declared access
//! checked, as in `cairn up`), its read model and an in-memory store: what
//! a live client reads and calls, and what it is refused.

use std::sync::Arc;

use cairn_auth::permissions::{FLIGHTS_READ, FLIGHTS_WRITE};
use cairn_core::{RequestContext, TenantId};
use cairn_domain::{
    CommandBus, QueryBus,
    bus::{BusConfig, DeclaredAccess},
};
use cairn_flightops_contracts::{CloseBoarding, ReopenBoarding};
use cairn_flights::{app::Flights, live::FlightsLive, view::FlightsProjection};
use cairn_live::{CallAnswer, Resources};
use cairn_projection::{Projection, ProjectionOptions, Projections};
use cairn_res::{Resource, Rid, Value};
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, MemoryStore};
use serde_json::{Value as Json, json};

async fn live() -> (FlightsLive, Projections) {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let projections = Projections::start(
        ServiceDb::ephemeral().await.unwrap(),
        store.clone(),
        [Arc::new(FlightsProjection) as Arc<dyn Projection>],
        ProjectionOptions::default(),
    )
    .await
    .unwrap();
    let commands = CommandBus::with_config(BusConfig::new().with_authorizer(DeclaredAccess::new()));
    let queries = QueryBus::with_config(BusConfig::new().with_authorizer(DeclaredAccess::new()));
    Flights::register(store, &commands, &queries, &projections).unwrap();
    // Passengers' side of a departure: boarding closes (no passengers here).
    commands
        .register_fn(|_ctx, _: CloseBoarding| async { Ok(Some(0)) })
        .unwrap();
    commands
        .register_fn(|_ctx, _: ReopenBoarding| async { Ok(Some(0)) })
        .unwrap();
    (
        FlightsLive {
            projections: projections.clone(),
            commands,
            queries,
        },
        projections,
    )
}

fn operator(tenant: &str) -> RequestContext {
    let mut ctx = RequestContext::new(TenantId::new(tenant).unwrap()).with_actor("op");
    ctx.permissions = [FLIGHTS_READ, FLIGHTS_WRITE].map(str::to_owned).into();
    ctx
}

fn rid(text: &str) -> Rid {
    Rid::parse(text).unwrap()
}

fn new_flight(number: &str) -> Json {
    json!({"number": number, "origin": "ARN", "destination": "LHR",
           "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
           "capacity": 30})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_is_created_listed_read_and_departed() {
    let (live, projections) = live().await;
    let acme = operator("acme");
    let created = live
        .call(
            &acme,
            &rid("flights.flights"),
            "create",
            new_flight("SK1421"),
        )
        .await
        .unwrap();
    let CallAnswer::Resource(flight) = created else {
        panic!("a created flight is answered as its resource: {created:?}");
    };
    assert_eq!(
        flight.parts().take(2).collect::<Vec<_>>(),
        ["flights", "flight"]
    );
    // The read model shows it at once: the call waited for it.
    let Resource::Model(model) = live.get(&acme, &flight).await.unwrap() else {
        panic!("a flight is a model");
    };
    assert_eq!(model["number"], Value::Primitive(json!("SK1421")));
    assert_eq!(model["status"], Value::Primitive(json!("scheduled")));
    assert_eq!(
        model["passengers"],
        Value::Data(json!({"total": 0, "boarded": 0}))
    );
    let list = live.get(&acme, &rid("flights.flights")).await.unwrap();
    assert_eq!(
        list,
        Resource::Collection(vec![Value::reference(flight.clone())])
    );
    let scheduled = live
        .get(&acme, &rid("flights.flights?status=scheduled"))
        .await
        .unwrap();
    assert_eq!(scheduled, list);
    let departed = live
        .get(&acme, &rid("flights.flights?status=departed"))
        .await
        .unwrap();
    assert_eq!(departed, Resource::Collection(vec![]));

    let answer = live
        .call(&acme, &flight, "depart", Json::Null)
        .await
        .unwrap();
    let CallAnswer::Payload(answer) = answer else {
        panic!("depart answers a payload: {answer:?}");
    };
    assert_eq!(answer["version"], 1, "{answer}");
    assert_eq!(answer["readModel"], "current", "{answer}");
    assert!(answer["position"].as_u64().is_some(), "{answer}");
    let Resource::Model(model) = live.get(&acme, &flight).await.unwrap() else {
        panic!("a flight is a model");
    };
    assert_eq!(model["status"], Value::Primitive(json!("departed")));
    // A rule refused keeps its code.
    let err = live
        .call(&acme, &flight, "depart", Json::Null)
        .await
        .unwrap_err();
    assert!(err.code.starts_with("cairn."), "{err}");
    projections.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_permissions_and_bad_input_are_refused() {
    let (live, projections) = live().await;
    let acme = operator("acme");
    let CallAnswer::Resource(flight) = live
        .call(&acme, &rid("flights.flights"), "create", new_flight("SK1"))
        .await
        .unwrap()
    else {
        panic!("a resource");
    };
    // Another tenant finds nothing.
    let globex = operator("globex");
    assert_eq!(
        live.get(&globex, &flight).await.unwrap_err().code,
        "system.notFound"
    );
    assert_eq!(
        live.get(&globex, &rid("flights.flights")).await.unwrap(),
        Resource::Collection(vec![])
    );
    // The same permissions as over HTTP.
    let mut reader = operator("acme");
    reader.permissions = [FLIGHTS_READ.to_owned()].into();
    assert!(live.get(&reader, &flight).await.is_ok());
    let err = live
        .call(
            &reader,
            &rid("flights.flights"),
            "create",
            new_flight("SK2"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "system.accessDenied");
    let nobody = RequestContext::new(TenantId::new("acme").unwrap()).with_actor("x");
    assert_eq!(
        live.get(&nobody, &flight).await.unwrap_err().code,
        "system.accessDenied"
    );
    // Bad input, each with its error.
    for (rid_text, method, params, code) in [
        (
            "flights.flights",
            "create",
            json!({"number": "SK1"}),
            "system.invalidParams",
        ),
        (
            "flights.flights",
            "create",
            json!({"number": "bad", "origin": "ARN", "destination": "LHR",
            "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z", "capacity": 30}),
            "system.invalidParams",
        ),
        (
            "flights.flights",
            "melt",
            Json::Null,
            "system.methodNotFound",
        ),
        (
            "flights.flight.nope",
            "depart",
            Json::Null,
            "system.notFound",
        ),
        ("flights.elsewhere", "create", Json::Null, "system.notFound"),
    ] {
        let err = live
            .call(&acme, &rid(rid_text), method, params)
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{rid_text}.{method}: {err}");
    }
    for (rid_text, code) in [
        ("flights.flights?color=red", "system.invalidQuery"),
        ("flights.flights?status=", "system.invalidQuery"),
        ("flights.flight.nope", "system.notFound"),
        ("flights.flight.x?q=1", "system.notFound"),
        ("flights.other", "system.notFound"),
    ] {
        assert_eq!(
            live.get(&acme, &rid(rid_text)).await.unwrap_err().code,
            code,
            "{rid_text}"
        );
    }
    projections.shutdown().await;
}
