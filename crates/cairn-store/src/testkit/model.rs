//! Model-based property test: random sequences of appends (with every kind
//! of expected version), resends, deletes and truncations run against the
//! store and against a plain in-test model; every outcome and the final state
//! must agree.

use std::{collections::HashMap, future::Future, pin::Pin};

use cairn_core::{NewEvent, StreamId, TenantId};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

use super::{StoreHandle, event, stream, tenant};
use crate::{AllFilter, ExpectedVersion, ReadStream, StoreError};

#[derive(Debug, Clone)]
enum Op {
    Append {
        tenant: usize,
        stream: usize,
        expected: ExpectedVersion,
        count: usize,
    },
    Resend {
        batch: usize,
    },
    Delete {
        tenant: usize,
        stream: usize,
        expected: ExpectedVersion,
    },
    Truncate {
        tenant: usize,
        stream: usize,
        before: u64,
    },
}

fn expected() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        Just(ExpectedVersion::StreamExists),
        (0u64..5).prop_map(ExpectedVersion::Exact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..3usize, expected(), 1..4usize)
            .prop_map(|(tenant, stream, expected, count)| Op::Append { tenant, stream, expected, count }),
        2 => (0..64usize).prop_map(|batch| Op::Resend { batch }),
        1 => (0..2usize, 0..3usize, expected())
            .prop_map(|(tenant, stream, expected)| Op::Delete { tenant, stream, expected }),
        1 => (0..2usize, 0..3usize, 0u64..5)
            .prop_map(|(tenant, stream, before)| Op::Truncate { tenant, stream, before }),
    ]
}

/// The outcome of one operation, reduced to what the model can predict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Appended { first: u64, last: u64 },
    Done,
    WrongExpectedVersion,
    Deleted,
    NotFound,
}

fn classify(result: Result<Option<(u64, u64)>, StoreError>) -> Result<Outcome, TestCaseError> {
    Ok(match result {
        Ok(Some((first, last))) => Outcome::Appended { first, last },
        Ok(None) => Outcome::Done,
        Err(StoreError::WrongExpectedVersion { .. }) => Outcome::WrongExpectedVersion,
        Err(StoreError::StreamDeleted { .. }) => Outcome::Deleted,
        Err(StoreError::StreamNotFound { .. }) => Outcome::NotFound,
        Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
    })
}

#[derive(Default)]
struct ModelStream {
    events: Vec<NewEvent>,
    deleted: bool,
    truncate_before: u64,
}

#[derive(Default)]
struct Model {
    streams: HashMap<(usize, usize), ModelStream>,
    /// Successful appends: (tenant, stream, events, first version).
    batches: Vec<(usize, usize, Vec<NewEvent>, u64)>,
    log: Vec<cairn_core::EventId>,
}

impl Model {
    fn current(&self, key: (usize, usize)) -> Option<u64> {
        self.streams.get(&key).map(|s| s.events.len() as u64 - 1)
    }

    fn expectation_holds(&self, key: (usize, usize), expected: ExpectedVersion) -> bool {
        let current = self.current(key);
        match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }

    fn append(
        &mut self,
        key: (usize, usize),
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Outcome {
        if self.streams.get(&key).is_some_and(|s| s.deleted) {
            return Outcome::Deleted;
        }
        if !self.expectation_holds(key, expected) {
            return Outcome::WrongExpectedVersion;
        }
        let first = self.current(key).map_or(0, |v| v + 1);
        let last = first + events.len() as u64 - 1;
        self.log.extend(events.iter().map(|e| e.id));
        self.streams
            .entry(key)
            .or_default()
            .events
            .extend(events.iter().cloned());
        self.batches.push((key.0, key.1, events, first));
        Outcome::Appended { first, last }
    }
}

type Factory<'a> =
    &'a (dyn Fn() -> Pin<Box<dyn Future<Output = Option<StoreHandle>> + Send>> + Sync);

/// Runs the property against fresh stores from `make`.
pub async fn check<F>(make: F)
where
    F: Fn() -> Pin<Box<dyn Future<Output = Option<StoreHandle>> + Send>> + Sync,
{
    if make().await.is_none() {
        return;
    }
    let factory: Factory<'_> = &make;
    let cases = std::env::var("CAIRN_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            handle.block_on(run_case(factory, ops))
        })
    });
    if let Err(e) = result {
        panic!("model-based property failed: {e}");
    }
}

async fn run_case(make: Factory<'_>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = make()
        .await
        .ok_or_else(|| TestCaseError::fail("store vanished"))?;
    let tenants = [tenant("t0"), tenant("t1")];
    let streams = [stream("s-0"), stream("s-1"), stream("other-2")];
    let mut model = Model::default();
    let mut counter = 0u64;
    let t = |i: usize| -> &TenantId { &tenants[i] };
    let s = |i: usize| -> &StreamId { &streams[i] };

    for op in ops {
        let (got, want) = match op.clone() {
            Op::Append {
                tenant,
                stream,
                expected,
                count,
            } => {
                let events: Vec<_> = (0..count)
                    .map(|_| {
                        counter += 1;
                        event("E", counter)
                    })
                    .collect();
                let got = store
                    .append(t(tenant), s(stream), expected, events.clone())
                    .await
                    .map(|o| Some((o.first_version, o.last_version)));
                (
                    classify(got)?,
                    model.append((tenant, stream), expected, events),
                )
            }
            Op::Resend { batch } => {
                if model.batches.is_empty() {
                    continue;
                }
                let (tenant, stream, events, first) =
                    model.batches[batch % model.batches.len()].clone();
                let got = store
                    .append(
                        t(tenant),
                        s(stream),
                        ExpectedVersion::NoStream,
                        events.clone(),
                    )
                    .await
                    .map(|o| Some((o.first_version, o.last_version)));
                let want = Outcome::Appended {
                    first,
                    last: first + events.len() as u64 - 1,
                };
                (classify(got)?, want)
            }
            Op::Delete {
                tenant,
                stream,
                expected,
            } => {
                let got = store
                    .delete_stream(t(tenant), s(stream), expected)
                    .await
                    .map(|()| None);
                let want = match model.streams.get(&(tenant, stream)) {
                    None => Outcome::NotFound,
                    Some(st) if st.deleted => Outcome::Deleted,
                    Some(_) if !model.expectation_holds((tenant, stream), expected) => {
                        Outcome::WrongExpectedVersion
                    }
                    Some(_) => {
                        model
                            .streams
                            .get_mut(&(tenant, stream))
                            .expect("present")
                            .deleted = true;
                        Outcome::Done
                    }
                };
                (classify(got)?, want)
            }
            Op::Truncate {
                tenant,
                stream,
                before,
            } => {
                let got = store
                    .truncate_stream(t(tenant), s(stream), before)
                    .await
                    .map(|()| None);
                let want = match model.streams.get_mut(&(tenant, stream)) {
                    None => Outcome::NotFound,
                    Some(st) if st.deleted => Outcome::Deleted,
                    Some(st) => {
                        st.truncate_before = st.truncate_before.max(before);
                        Outcome::Done
                    }
                };
                (classify(got)?, want)
            }
        };
        prop_assert_eq!(got, want, "operation {:?}", op);
    }

    for (&(ti, si), st) in &model.streams {
        let read = store.read_stream(t(ti), s(si), ReadStream::all()).await;
        if st.deleted {
            prop_assert!(
                matches!(read, Err(StoreError::StreamDeleted { .. })),
                "{:?}",
                read
            );
            continue;
        }
        let read = read.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<_> = st
            .events
            .iter()
            .skip(st.truncate_before as usize)
            .map(|e| e.id)
            .collect();
        let got: Vec<_> = read.iter().map(|e| e.id).collect();
        prop_assert_eq!(got, want);
        prop_assert!(
            read.iter()
                .zip(st.truncate_before..)
                .all(|(e, v)| e.version == v)
        );
    }
    let all = store
        .read_all(0, &AllFilter::all_tenants(), usize::MAX)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got: Vec<_> = all.iter().map(|e| e.id).collect();
    prop_assert_eq!(got, model.log.clone());
    prop_assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    Ok(())
}
