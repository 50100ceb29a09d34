//! The broker of `cairn run`: one connection serving as both the event
//! broker and the request/reply transport ([`Link`]), and the start of a
//! service's relay, which first declares the consumer groups that read its
//! events so that none misses what is published before its reader starts.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use cairn_identity::revocations;
use cairn_messaging::{Broker, Relay, RelayOptions, RequestTransport};
use cairn_messaging_amqp::{AmqpBroker, AmqpOptions};
use cairn_messaging_nats::{NatsBroker, NatsOptions};
use cairn_projection::ReadDb;
use cairn_store::EventStore;

use super::settings::Settings;

/// A broker handle as both contracts.
pub(crate) struct Link {
    pub(crate) broker: Arc<dyn Broker>,
    pub(super) transport: Arc<dyn RequestTransport>,
    pub(crate) what: String,
}

pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<Link> {
    let url = settings.broker.as_deref().context("no broker")?;
    if url.starts_with("nats://") {
        let nats = NatsBroker::connect(url, NatsOptions::with_prefix(&settings.prefix))
            .await
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
        let nats = Arc::new(nats);
        Ok(Link {
            broker: nats.clone(),
            transport: nats,
            what: format!("NATS JetStream {url} (prefix {})", settings.prefix),
        })
    } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let amqp = AmqpBroker::connect(url, AmqpOptions::with_prefix(&settings.prefix))
            .await
            .context("cannot connect to RabbitMQ")?;
        let amqp = Arc::new(amqp);
        Ok(Link {
            broker: amqp.clone(),
            transport: amqp,
            what: format!("RabbitMQ (prefix {})", settings.prefix),
        })
    } else {
        bail!("unknown broker URL (expected nats://… or amqp://…)")
    }
}

/// Declares, before `service`'s relay publishes anything, the consumer
/// groups of this system that read its events: on RabbitMQ a queue keeps
/// only what is published after it exists, so the order in which services
/// start must not decide what a consumer sees.
async fn declare_consumers_of(service: &str, link: &Link) -> anyhow::Result<()> {
    let groups = match service {
        "flights" => vec![
            cairn_passengers::messaging::FLIGHT_EVENTS.to_owned(),
            cairn_audit::group("flights"),
        ],
        "passengers" => vec![
            cairn_flights::messaging::PASSENGER_EVENTS.to_owned(),
            cairn_audit::group("passengers"),
        ],
        "identity" => vec![
            revocations::group("flights"),
            revocations::group("passengers"),
            revocations::group("audit"),
            cairn_audit::group("identity"),
        ],
        _ => Vec::new(),
    };
    for group in groups {
        let spec = cairn_messaging::ConsumerSpec::new(group.clone(), service);
        link.broker
            .declare(&spec)
            .await
            .with_context(|| format!("declaring the consumer group {group}"))?;
    }
    Ok(())
}

/// Declares the groups that read `public`'s events, then starts its relay.
pub(super) async fn start_relay(
    public: cairn_messaging::PublicEvents,
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    link: &Link,
) -> anyhow::Result<Relay> {
    declare_consumers_of(&public.service, link).await?;
    Relay::start(
        public,
        store,
        db.clone(),
        link.broker.clone(),
        RelayOptions::default(),
    )
    .await
    .context("starting the relay")
}
