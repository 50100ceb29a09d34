//! A service's side of the RES-Service protocol over a real NATS server,
//! asked as Resgate asks it: `auth.<service>.token` sets the connection's
//! token (`conn.<cid>.token`), which `access` then takes. Skipped without
//! NATS unless `CAIRN_TEST_SERVICES=required`.

mod common;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use cairn_core::{RequestContext, TenantId};
use cairn_live::{
    Authenticate, Bearer, Publisher, Resources, Session,
    nats::{ServiceSide, serve},
};
use cairn_res::{ResError, Resource, Rid};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};

/// `toy.thing`, a model every caller of the tenant may read.
struct Toy;

#[async_trait]
impl Resources for Toy {
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        match rid.name() {
            "toy.thing" => Ok(Resource::model_from_json(
                json!({ "tenant": ctx.tenant.as_str() })
                    .as_object()
                    .unwrap()
                    .clone(),
            )),
            _ => Err(ResError::not_found()),
        }
    }
}

/// `good` is acme's admin, with token id `t-1`; anything else is refused.
struct Tokens;

#[async_trait]
impl Authenticate for Tokens {
    async fn session(&self, token: &str, tenant: Option<&str>) -> Result<Session, ResError> {
        if token != "good" {
            return Err(ResError::access_denied().with_data(json!({"code": "invalid_signature"})));
        }
        if tenant.is_some_and(|t| t != "acme") {
            return Err(ResError::not_found());
        }
        let acme = TenantId::new("acme").unwrap();
        let mut session = Session::new(RequestContext::new(acme.clone()).with_actor("acme-admin"));
        session.bearer = Some(Bearer(token.to_owned()));
        session.token_id = Some((acme, "t-1".to_owned()));
        Ok(session)
    }

    async fn still_valid(&self, _session: &Session) -> Result<(), ResError> {
        Ok(())
    }
}

/// Sends `payload` to `<prefix>.<subject>` and reads the response.
async fn ask(client: &async_nats::Client, prefix: &str, subject: &str, payload: Json) -> Json {
    let message = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(format!("{prefix}.{subject}"), payload.to_string().into()),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    serde_json::from_slice(&message.payload).unwrap()
}

#[tokio::test]
async fn an_auth_request_sets_the_connections_token_that_access_then_takes() {
    let Some(client) = common::nats().await else {
        return;
    };
    let prefix = format!(
        "resservice{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let side = ServiceSide {
        prefix: prefix.clone(),
        service: "toy".to_owned(),
        group: "toy".to_owned(),
        resources: Arc::new(Toy),
        auth: Arc::new(Tokens),
        reader: Default::default(),
    };
    let _serving = serve(client.clone(), side, &Publisher::new(4))
        .await
        .unwrap();
    let mut tokens = client
        .subscribe(format!("{prefix}.conn.*.token"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    // Refused: a bad token, a token of the wrong type, no token at all, a
    // cookie from a page of another origin, another method.
    let refusals = [
        (
            "auth.toy.token",
            json!({"cid": "c0", "params": {"token": "forged"}}),
            "system.accessDenied",
        ),
        (
            "auth.toy.token",
            json!({"cid": "c0", "params": {"token": 7}}),
            "system.invalidParams",
        ),
        (
            "auth.toy.token",
            json!({"cid": "c0"}),
            "system.accessDenied",
        ),
        (
            "auth.toy.token",
            json!({"cid": "c0", "header": {
                "Cookie": ["cairn_token=good"],
                "Origin": ["https://evil.example"], "Host": ["live.example"]
            }}),
            "system.accessDenied",
        ),
        (
            "auth.toy.login",
            json!({"cid": "c0", "params": {"token": "good"}}),
            "system.methodNotFound",
        ),
    ];
    for (subject, payload, code) in refusals {
        let answer = ask(&client, &prefix, subject, payload.clone()).await;
        assert_eq!(
            answer["error"]["code"], code,
            "{subject} {payload}: {answer}"
        );
    }

    // Accepted: the token as a parameter, as the upgrade's header, as the
    // cookie of a page of the same origin.
    let accepted = [
        ("c1", json!({"params": {"token": "good"}})),
        ("c2", json!({"header": {"Authorization": ["Bearer good"]}})),
        (
            "c3",
            json!({"header": {
                "Cookie": ["a=b; cairn_token=good"],
                "Origin": ["https://live.example"], "Host": ["live.example"]
            }}),
        ),
    ];
    for (cid, mut payload) in accepted {
        payload["cid"] = json!(cid);
        let answer = ask(&client, &prefix, "auth.toy.token", payload).await;
        assert_eq!(
            answer["result"],
            json!({"tenant": "acme", "actor": "acme-admin"}),
            "{cid}: {answer}"
        );
        let event = tokio::time::timeout(Duration::from_secs(5), tokens.next())
            .await
            .expect("the connection's token in time")
            .unwrap();
        assert_eq!(event.subject.as_str(), format!("{prefix}.conn.{cid}.token"));
        let event: Json = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(event, json!({"token": {"token": "good"}, "tid": "t-1"}));
        // What the gateway now sends with the connection's requests.
        let access = ask(
            &client,
            &prefix,
            "access.toy.acme.thing",
            json!({"cid": cid, "token": event["token"]}),
        )
        .await;
        assert_eq!(access["result"]["get"], true, "{access}");
    }
    // No token was sent for any refusal.
    let none = tokio::time::timeout(Duration::from_millis(200), tokens.next()).await;
    assert!(none.is_err(), "{none:?}");
}
