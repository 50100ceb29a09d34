//! The append rules every backend applies the same way: input validation,
//! the expected-version check and the idempotency judgement. Backends only
//! fetch the state these functions judge, so the rules cannot drift apart.

use std::collections::{HashMap, HashSet};

use cairn_core::{NewEvent, RecordedEvent, StreamId};

use crate::{AppendOutcome, ExpectedVersion, StoreError};

/// Most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Checks an append's input; nothing may be written when this fails.
pub fn validate_append(events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::invalid(
            "events",
            "an append needs at least one event",
        ));
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::invalid(
            "events",
            format!(
                "at most {MAX_EVENTS_PER_APPEND} events per append, got {}",
                events.len()
            ),
        ));
    }
    let mut ids = HashSet::with_capacity(events.len());
    for e in events {
        e.validate()?;
        if !ids.insert(e.id) {
            return Err(StoreError::invalid(
                "events",
                format!("event id {} appears twice", e.id),
            ));
        }
    }
    Ok(())
}

/// Checks `expected` against the stream's current version (`None`: no events).
pub fn check_expected(
    stream: &StreamId,
    expected: ExpectedVersion,
    current: Option<u64>,
) -> Result<(), StoreError> {
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current.is_none(),
        ExpectedVersion::StreamExists => current.is_some(),
        ExpectedVersion::Exact(v) => current == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual: current,
        })
    }
}

/// Whether an append is new or a resend of one already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// None of the ids is stored: append normally.
    New,
    /// Every id is stored, in this stream, in this order, with the same
    /// content: return this and write nothing.
    Replay(AppendOutcome),
}

/// Judges an append given the already-stored events (of the same tenant)
/// that carry any of its ids, in any order.
pub fn judge_idempotency(
    stream: &StreamId,
    events: &[NewEvent],
    stored: &[RecordedEvent],
) -> Result<Idempotency, StoreError> {
    if stored.is_empty() {
        return Ok(Idempotency::New);
    }
    let by_id: HashMap<_, _> = stored.iter().map(|r| (r.id, r)).collect();
    let mut first: Option<&RecordedEvent> = None;
    let mut last: Option<&RecordedEvent> = None;
    for (i, new) in events.iter().enumerate() {
        let conflict = |reason: &str| StoreError::IdempotencyConflict {
            event_id: new.id,
            reason: reason.to_owned(),
        };
        let Some(rec) = by_id.get(&new.id) else {
            return Err(conflict("the append mixes stored and new event ids"));
        };
        if &rec.stream != stream {
            return Err(conflict(&format!("it is stored in stream {}", rec.stream)));
        }
        if !new.same_content_as(rec) {
            return Err(conflict("it is stored with different content"));
        }
        let first_rec = *first.get_or_insert(rec);
        if rec.version != first_rec.version + i as u64 {
            return Err(conflict("the stored events are in another order"));
        }
        last = Some(rec);
    }
    let (first, last) = (
        first.expect("events is not empty"),
        last.expect("events is not empty"),
    );
    Ok(Idempotency::Replay(AppendOutcome {
        first_version: first.version,
        last_version: last.version,
        first_position: first.position,
        last_position: last.position,
    }))
}
