//! A consumer's lanes: deliveries fanned out by stream (events of one
//! stream always share a lane), each lane taking what has arrived as one
//! batch, and the broker reopened when it goes away.

use super::*;

impl Core {
    pub(super) async fn receive(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        spec: ConsumerSpec,
        mut deliveries: Box<dyn crate::Deliveries>,
        mut stop: watch::Receiver<bool>,
    ) {
        let lanes: Vec<_> = (0..self.options.lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Delivery>(64);
                let core = self.clone();
                let task = tokio::spawn(async move {
                    let max = core.options.max_batch.max(1);
                    while let Some(first) = rx.recv().await {
                        let mut batch = vec![first];
                        while batch.len() < max {
                            match rx.try_recv() {
                                Ok(more) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        if batch.len() == 1 {
                            core.process(batch.pop().expect("one delivery")).await;
                        } else {
                            core.process_batch(batch).await;
                        }
                    }
                });
                (tx, task)
            })
            .collect();
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = stop.changed() => break,
            };
            match next {
                Some(Ok(delivery)) => {
                    failures = 0;
                    let lane = lane_of(&delivery, lanes.len());
                    if lanes[lane].0.send(delivery).await.is_err() {
                        break;
                    }
                }
                other => {
                    let error = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "the broker closed the consumer".to_owned(),
                    };
                    failures += 1;
                    tracing::warn!(group = %self.group, error = %error, "consumer lost its broker; reopening");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(error);
                    });
                    let pause = crate::relay::next_backoff(
                        Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6)),
                        Duration::from_secs(5),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => break,
                    }
                    if let Ok(reopened) = broker.consume(&spec).await {
                        deliveries = reopened;
                        self.status.send_modify(|s| s.connected = true);
                    }
                }
            }
        }
        drop(deliveries);
        for (tx, task) in lanes {
            drop(tx);
            let _ = task.await;
        }
    }
}

/// Events of one stream always land in the same lane.
pub(super) fn lane_of(delivery: &Delivery, lanes: usize) -> usize {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        tenantid: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        subject: Option<std::borrow::Cow<'a, str>>,
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Ok(key) = serde_json::from_slice::<Key<'_>>(&delivery.body) {
        key.tenantid.hash(&mut hasher);
        key.subject.hash(&mut hasher);
    }
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}
