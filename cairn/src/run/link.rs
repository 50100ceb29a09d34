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
use cairn_service::{Layout, ServiceDescriptor};
use cairn_service_db::ServiceDb;
use cairn_store::EventStore;

use super::settings::Settings;

/// A broker handle as both contracts.
pub(crate) struct Link {
    pub(crate) broker: Arc<dyn Broker>,
    pub(super) transport: Arc<dyn RequestTransport>,
    pub(crate) what: String,
    /// The NATS connection, on NATS: the live API's requests and changes
    /// travel on it (RES-Service, `cairn_live::nats`).
    pub(crate) nats: Option<async_nats::Client>,
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
            nats: Some(nats.client().clone()),
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
            nats: None,
            what: format!("RabbitMQ (prefix {})", settings.prefix),
        })
    } else {
        bail!("unknown broker URL (expected nats://… or amqp://…)")
    }
}

/// The consumer groups of the deployment that read `service`'s events:
/// those the services declare, and, when `service` issues the tokens,
/// every other service's revoked-token list.
pub(super) fn readers_of(
    service: &str,
    services: &[ServiceDescriptor],
    layout: Layout<'_>,
) -> Vec<String> {
    let issues_tokens = services
        .iter()
        .any(|s| s.name == service && s.issues_tokens);
    let mut groups = Vec::new();
    for other in services.iter().filter(|s| s.name != service) {
        if issues_tokens && !other.issues_tokens {
            groups.push(revocations::group(other.name));
        }
        groups.extend(
            other
                .groups_in(layout)
                .into_iter()
                .filter(|g| g.source == service)
                .map(|g| g.group),
        );
    }
    groups
}

/// Declares, before a service's relay publishes anything, the consumer
/// groups that read its events (`readers`): on RabbitMQ a queue keeps
/// only what is published after it exists, so the order in which services
/// start must not decide what a consumer sees.
async fn declare_readers(service: &str, readers: &[String], link: &Link) -> anyhow::Result<()> {
    for group in readers {
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
    db: &ServiceDb,
    link: &Link,
    readers: &[String],
) -> anyhow::Result<Relay> {
    declare_readers(&public.service, readers, link).await?;
    cairn_messaging::start_relay(
        public,
        store,
        db.clone(),
        link.broker.clone(),
        RelayOptions::default(),
    )
    .await
    .context("starting the relay")
}

#[cfg(test)]
mod tests {
    use cairn_service::Topology;

    use super::*;

    #[test]
    fn every_group_that_reads_a_service_is_declared_before_its_relay() {
        let services = crate::services::all();
        let published = crate::platform::published(&services);
        let layout = Layout {
            topology: Topology::Own,
            published: &published,
        };
        let sorted = |service| {
            let mut groups = readers_of(service, &services, layout);
            groups.sort();
            groups
        };
        assert_eq!(
            sorted("flights"),
            ["audit-flights-events", "passengers-flight-events"]
        );
        assert_eq!(
            sorted("passengers"),
            ["audit-passengers-events", "flights-passenger-events"]
        );
        let mut identity = vec![
            revocations::group("flights"),
            revocations::group("passengers"),
            revocations::group("audit"),
            cairn_audit::group("identity"),
        ];
        identity.sort();
        assert_eq!(sorted("identity"), identity);
        assert!(sorted("audit").is_empty());
    }
}
