//! The live API's operations resources (`ops.*`): the process's
//! projections, consumers, dead letters and store head, read from the
//! runtime (nothing per service), pushed once a second while they change.
//!
//! ```text
//! ops.store                      {head, eventsPerSecond[, id]}
//! ops.projections                ops.projection.<name>, by name
//! ops.projection.<name>          {name, state, position, head, lag, lagSeconds, parked, skipped, error}
//! ops.consumers                  ops.consumer.<group>, by group
//! ops.consumer.<group>           {group, source, handled, skipped, duplicates, retries,
//!                                 deadLettered, replayed, lastError, connected}
//! ops.deadletters                the caller's tenant's dead letters, oldest first
//! ops.deadletter.<kind>.<key>.<name>   {id, kind, name, position, eventId, eventType,
//!                                 stream, error, at, replay}; call `replay` (consumers')
//! ```
//!
//! Reading needs `projections:read` and replaying `projections:admin`,
//! as the projections' HTTP admin API does; a projection's failure at
//! another tenant's event is redacted the same way
//! ([`cairn_http::visible_projection_status`]). Projections, consumers and
//! the head are the whole process's; dead letters are the caller's
//! tenant's only.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use cairn_auth::permissions;
use cairn_core::{ErrorCode, RequestContext};
use cairn_live::{CallAnswer, Change, Publisher, Resources};
use cairn_messaging::{ConsumerStatus, DeadLetterFilter, DeadLetters};
use cairn_projection::Projections;
use cairn_res::{ResError, Resource, Rid, Value};
use cairn_service::{Running, Stage};
use cairn_store::EventStore;
use serde_json::{Map, Value as Json, json};
use tokio::sync::watch;

/// The most dead letters `ops.deadletters` lists.
const MAX_DEAD_LETTERS: usize = 200;
/// How often the operations resources are read again for who holds them.
const TICK: Duration = Duration::from_secs(1);

/// The `ops` resources of one process. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Ops {
    inner: Arc<Inner>,
}

struct Inner {
    /// None in a service that runs no projections.
    projections: Option<Projections>,
    consumers: Vec<watch::Receiver<ConsumerStatus>>,
    dead_letters: Option<DeadLetters>,
    /// None in a service that keeps no events (`ops.store` is not found).
    store: Option<Arc<dyn EventStore>>,
    /// Events appended per second, over the last tick.
    rate: Mutex<f64>,
    /// Which store it is, the same in every service that shares it (the
    /// gateway counts a store once): a fingerprint of its address.
    store_id: Option<String>,
}

impl Ops {
    pub(crate) fn new(
        projections: Option<Projections>,
        consumers: Vec<watch::Receiver<ConsumerStatus>>,
        dead_letters: Option<DeadLetters>,
        store: Option<Arc<dyn EventStore>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                projections,
                consumers,
                dead_letters,
                store,
                rate: Mutex::new(0.0),
                store_id: None,
            }),
        }
    }

    /// With the store's address, for `ops.store`'s `id` (a fingerprint:
    /// the address is not shown).
    pub(crate) fn with_store_address(mut self, address: &str) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.store_id = Some(fingerprint(address));
        }
        self
    }

    /// Measures the append rate and asks every connection holding an
    /// operations resource to read it again, once a second, until stopped.
    pub(crate) fn push(&self, publisher: Publisher) -> Running<()> {
        let ops = self.clone();
        Running::start("live ops", Stage::Support, (), move |mut controls| {
            vec![tokio::spawn(async move {
                let mut ticks = tokio::time::interval(TICK);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = (Instant::now(), ops.head());
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = controls.stop.wait_for(|stop| *stop) => return,
                    }
                    let now = (Instant::now(), ops.head());
                    let seconds = now.0.duration_since(last.0).as_secs_f64();
                    if seconds > 0.0 {
                        *ops.inner.rate.lock().expect("rate") =
                            now.1.saturating_sub(last.1) as f64 / seconds;
                    }
                    last = now;
                    publisher.publish(Change::ResetAll { names: ops.names() });
                }
            })]
        })
    }

    fn head(&self) -> u64 {
        self.inner
            .store
            .as_ref()
            .map_or(0, |store| *store.head().borrow())
    }

    fn projection_names(&self) -> Vec<String> {
        self.inner
            .projections
            .as_ref()
            .map(|p| p.names().into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Every operations resource by name (dead letters' own models are
    /// reset through their list).
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = [
            "ops.store",
            "ops.projections",
            "ops.consumers",
            "ops.deadletters",
        ]
        .map(String::from)
        .into();
        names.extend(
            self.projection_names()
                .into_iter()
                .map(|n| format!("ops.projection.{n}")),
        );
        names.extend(
            self.inner
                .consumers
                .iter()
                .map(|c| format!("ops.consumer.{}", c.borrow().group)),
        );
        names
    }

    fn consumer(&self, group: &str) -> Option<ConsumerStatus> {
        self.inner
            .consumers
            .iter()
            .map(|c| c.borrow().clone())
            .find(|c| c.group == group)
    }

    async fn dead_letters(&self, ctx: &RequestContext) -> Result<Vec<DeadLetterView>, ResError> {
        let mut all = Vec::new();
        for name in self.projection_names() {
            let Some(projections) = &self.inner.projections else {
                break;
            };
            let letters = projections
                .dead_letters(&name, 0, MAX_DEAD_LETTERS as u32)
                .await
                .map_err(|e| unavailable(&e))?;
            all.extend(
                letters
                    .into_iter()
                    .filter(|l| l.tenant == ctx.tenant.as_str())
                    .map(|l| DeadLetterView {
                        kind: "projection",
                        name: l.projection,
                        key: l.position.to_string(),
                        position: Some(l.position),
                        event_id: l.event_id,
                        event_type: Some(l.event_type),
                        stream: Some(l.stream),
                        error: l.error,
                        at: l.recorded_at.to_rfc3339(),
                        replay: false,
                    }),
            );
        }
        if let Some(dead_letters) = &self.inner.dead_letters {
            let letters = dead_letters
                .list(&DeadLetterFilter::default(), MAX_DEAD_LETTERS)
                .await
                .map_err(|e| unavailable(&e))?;
            all.extend(
                letters
                    .into_iter()
                    .filter(|l| l.tenant.as_deref() == Some(ctx.tenant.as_str()))
                    .map(|l| DeadLetterView {
                        kind: "consumer",
                        name: l.consumer,
                        key: l.event_id.clone(),
                        position: None,
                        event_id: l.event_id,
                        event_type: l.event_type,
                        stream: l.stream,
                        error: l.error,
                        at: l.dead_at,
                        replay: l.replay,
                    }),
            );
        }
        // A key is one part of a resource id: one with a dot has none.
        all.retain(|l| !l.key.is_empty() && !l.key.contains('.'));
        all.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id().cmp(&b.id())));
        all.truncate(MAX_DEAD_LETTERS);
        Ok(all)
    }
}

/// One dead letter as `ops.deadletter.…` shows it.
struct DeadLetterView {
    kind: &'static str,
    name: String,
    key: String,
    position: Option<u64>,
    event_id: String,
    event_type: Option<String>,
    stream: Option<String>,
    error: String,
    at: String,
    replay: bool,
}

impl DeadLetterView {
    fn id(&self) -> String {
        format!("{}.{}.{}", self.kind, self.key, self.name)
    }

    fn rid(&self) -> Rid {
        Rid::parse(&format!("ops.deadletter.{}", self.id())).expect("checked parts")
    }

    fn model(&self) -> Resource {
        model(json!({
            "id": self.id(),
            "kind": self.kind,
            "name": self.name,
            "position": self.position,
            "eventId": self.event_id,
            "eventType": self.event_type,
            "stream": self.stream,
            "error": self.error,
            "at": self.at,
            "replay": self.replay,
        }))
    }
}

/// FNV-1a, 64 bits, in hex: the same for the same address in every
/// process and release (the standard library's hasher promises neither),
/// and no crate for eight lines.
fn fingerprint(address: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in address.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn model(json: Json) -> Resource {
    match json {
        Json::Object(fields) => Resource::model_from_json(fields),
        _ => Resource::model_from_json(Map::new()),
    }
}

fn references(rids: impl IntoIterator<Item = Rid>) -> Resource {
    Resource::Collection(rids.into_iter().map(Value::reference).collect())
}

fn unavailable(error: &dyn std::fmt::Display) -> ResError {
    tracing::warn!(%error, "an operations resource cannot be read");
    ResError::from_code(ErrorCode::Unavailable, "the read database is unavailable")
}

fn require(ctx: &RequestContext, permission: &str) -> Result<(), ResError> {
    if ctx.has_permission(permission) {
        Ok(())
    } else {
        Err(ResError::from_code(
            ErrorCode::Forbidden,
            format!("this needs the {permission} permission (roles admin, super-admin)"),
        ))
    }
}

fn consumer_model(status: &ConsumerStatus) -> Resource {
    model(json!({
        "group": status.group,
        "source": status.source,
        "handled": status.handled,
        "skipped": status.skipped,
        "duplicates": status.duplicates,
        "retries": status.retries,
        "deadLettered": status.dead_lettered,
        "replayed": status.replayed,
        "lastError": status.last_error,
        "connected": status.connected,
    }))
}

#[async_trait]
impl Resources for Ops {
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        require(ctx, permissions::PROJECTIONS_READ)?;
        if rid.query().is_some() {
            return Err(ResError::not_found());
        }
        let parts: Vec<&str> = rid.parts().collect();
        match parts.as_slice() {
            ["ops", "store"] if self.inner.store.is_some() => {
                let mut store = json!({
                    "head": self.head(),
                    "eventsPerSecond": *self.inner.rate.lock().expect("rate"),
                });
                if let Some(id) = &self.inner.store_id {
                    store["id"] = json!(id);
                }
                Ok(model(store))
            }
            ["ops", "projections"] => {
                let mut names = self.projection_names();
                names.sort_unstable();
                Ok(references(names.into_iter().filter_map(|n| {
                    Rid::parse(&format!("ops.projection.{n}")).ok()
                })))
            }
            ["ops", "projection", name @ ..] if !name.is_empty() => {
                let name = name.join(".");
                let status = self
                    .inner
                    .projections
                    .as_ref()
                    .ok_or_else(ResError::not_found)?
                    .status_of(&name)
                    .await
                    .map_err(|_| ResError::not_found())?;
                let status = cairn_http::visible_projection_status(ctx, status);
                Ok(model(json!({
                    "name": status.name,
                    "state": status.state,
                    "position": status.position,
                    "head": status.head,
                    "lag": status.lag_events,
                    "lagSeconds": status.lag_seconds,
                    "parked": status.parked,
                    "skipped": status.skipped,
                    "error": status.failure.map(|f| format!("{} at {} ({}): {}", f.event_type, f.position, f.stream, f.error)),
                })))
            }
            ["ops", "consumers"] => {
                let mut groups: Vec<String> = self
                    .inner
                    .consumers
                    .iter()
                    .map(|c| c.borrow().group.clone())
                    .collect();
                groups.sort_unstable();
                Ok(references(groups.into_iter().filter_map(|g| {
                    Rid::parse(&format!("ops.consumer.{g}")).ok()
                })))
            }
            ["ops", "consumer", group @ ..] if !group.is_empty() => self
                .consumer(&group.join("."))
                .map(|status| consumer_model(&status))
                .ok_or_else(ResError::not_found),
            ["ops", "deadletters"] => Ok(references(
                self.dead_letters(ctx)
                    .await?
                    .iter()
                    .map(DeadLetterView::rid),
            )),
            ["ops", "deadletter", kind, key, name @ ..] if !name.is_empty() => {
                let name = name.join(".");
                self.dead_letters(ctx)
                    .await?
                    .into_iter()
                    .find(|l| l.kind == *kind && l.name == name && l.key == *key)
                    .map(|l| l.model())
                    .ok_or_else(ResError::not_found)
            }
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
        let parts: Vec<&str> = rid.parts().collect();
        let ["ops", "deadletter", kind, key, name @ ..] = parts.as_slice() else {
            return Err(ResError::method_not_found());
        };
        let name = name.join(".");
        if method != "replay" {
            return Err(ResError::method_not_found());
        }
        require(ctx, permissions::PROJECTIONS_ADMIN)?;
        // It must be one the caller sees: their own tenant's.
        self.get(ctx, rid).await?;
        match (*kind, &self.inner.dead_letters) {
            ("consumer", Some(dead_letters)) => {
                let filter = DeadLetterFilter {
                    consumer: Some(name),
                    event_id: Some((*key).to_owned()),
                };
                let marked = dead_letters
                    .replay(&filter)
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(CallAnswer::Payload(json!({ "replaying": marked })))
            }
            _ => Err(ResError::from_code(
                ErrorCode::RuleViolation,
                "a projection's dead letter is not replayed alone: retry or rebuild the projection",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_store_address_has_a_stable_fingerprint() {
        // FNV-1a's published values.
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
        assert_ne!(
            fingerprint("postgres://db/cairn?schema=a"),
            fingerprint("postgres://db/cairn?schema=b")
        );
    }
}
