//! What the store benchmark writes and how it times it: a realistic order
//! event (a ~150-byte JSON payload with correlation, causation and actor
//! metadata) made the same way for Cairn and for the raw SQL baselines, and
//! latency histograms in microseconds.

use std::time::Duration;

use cairn_core::{EventId, Metadata, NewEvent};
use hdrhistogram::Histogram;
use serde_json::json;
use uuid::Uuid;

/// Event type of every benchmark event.
pub(crate) const EVENT_TYPE: &str = "OrderPlaced";

/// The `seq`-th benchmark event: a fresh id, a payload of about 150 bytes
/// whose fields vary with `seq` (so no two rows compress or cache alike),
/// and the metadata a traced service would attach.
pub(crate) fn order_event(seq: u64) -> NewEvent {
    let data = json!({
        "orderId": format!("ord-{seq:012}"),
        "customerId": format!("cus-{:06}", seq % 100_000),
        "sku": format!("SKU-{:04}-BLUE-M", seq % 10_000),
        "quantity": 1 + seq % 5,
        "unitPriceCents": 1_999 + seq % 1_000,
        "currency": "EUR",
        "channel": "web",
    });
    let metadata = Metadata {
        correlation_id: Some(Uuid::now_v7().to_string()),
        causation_id: Some(Uuid::now_v7().to_string()),
        traceparent: None,
        actor: Some(format!("user:cus-{:06}", seq % 100_000)),
    };
    NewEvent {
        id: EventId::new(),
        event_type: EVENT_TYPE.to_owned(),
        schema_version: 1,
        data,
        metadata,
    }
}

/// A latency histogram in microseconds, from 1 µs to an hour at three
/// significant digits: wide enough that no append can fall outside it.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure here is a
    // programming error, not an input error.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// The `quantile` (0..=1) of `histogram`, in milliseconds.
pub(crate) fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// Events per second, guarding against a zero-length measurement.
pub(crate) fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_about_150_bytes_and_valid() {
        for seq in [0, 7, 99_999, 123_456_789] {
            let e = order_event(seq);
            let len = serde_json::to_string(&e.data).unwrap().len();
            assert!((130..=170).contains(&len), "payload of {len} bytes");
            e.validate().unwrap();
        }
    }

    #[test]
    fn quantiles_come_out_in_milliseconds() {
        let mut h = latency_histogram();
        for ms in 1..=100 {
            record(&mut h, Duration::from_millis(ms));
        }
        let p50 = quantile_ms(&h, 0.5);
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        record(&mut h, Duration::ZERO);
        assert_eq!(h.min(), 1);
    }
}
