//! A live API client for the tests: one WebSocket, requests answered in
//! order, events kept until asked for.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};

pub(crate) struct Client {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    pub(crate) events: Vec<Json>,
}

impl Client {
    /// A connection to `ws://{base}/ws`, with `token` at the upgrade.
    pub(crate) async fn connect(base: &str, token: Option<&str>) -> Self {
        let mut request = format!("ws://{base}/ws").into_client_request().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (ws, _) = connect_async(request).await.expect("the upgrade succeeds");
        Self {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    pub(crate) async fn request(&mut self, method: &str, params: Json) -> Json {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "id": id, "method": method });
        if !params.is_null() {
            request["params"] = params;
        }
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("an answer in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                let frame: Json = serde_json::from_str(&text).unwrap();
                if frame["id"] == json!(id) {
                    return frame;
                }
                if frame.get("event").is_some() {
                    self.events.push(frame);
                }
            }
        }
    }

    /// Events until one of each name has come (the last of each name).
    pub(crate) async fn events_until(
        &mut self,
        names: &[String],
    ) -> std::collections::HashMap<String, Json> {
        let mut seen = std::collections::HashMap::new();
        while !names.iter().all(|n| seen.contains_key(n)) {
            let event = self.event().await;
            let name = event["event"].as_str().unwrap().to_owned();
            seen.insert(name, event);
        }
        seen
    }

    /// The next event.
    pub(crate) async fn event(&mut self) -> Json {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("an event in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                let frame: Json = serde_json::from_str(&text).unwrap();
                assert!(frame.get("event").is_some(), "{frame}");
                return frame;
            }
        }
    }
}
