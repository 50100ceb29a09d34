//! The saga runner end to end, on SQLite and PostgreSQL timeouts tables and
//! an in-memory event store: commands in order, compensation, deadlines that
//! survive a crash, cancelled and spurious timeouts, concurrent feeds, bad
//! input.

mod common;

use std::{sync::Arc, time::Duration};

use cairn_core::{ErrorCode, RequestContext};
use cairn_saga::{SagaError, SagaRunner};
use cairn_store::{EventStore, MemoryStore};
use common::*;

type Runner = SagaRunner<Transfer>;

fn runner(store: Arc<dyn EventStore>, db: &TestDb, bank: &Bank) -> Arc<Runner> {
    Arc::new(SagaRunner::new(
        store,
        db.db.clone(),
        bank.clone(),
        options(),
    ))
}

const LONG: Duration = Duration::from_secs(600);

on_both_backends!(
    happy_path_sends_commands_in_order_and_records_events,
    a_failing_step_is_compensated,
    a_deadline_survives_a_crash_and_a_new_process_compensates,
    cancelled_timeouts_never_fire,
    a_spurious_timeout_is_ignored,
    concurrent_feeds_of_one_saga_take_turns_and_lose_nothing,
    two_processes_racing_on_one_saga_lose_nothing,
    a_lost_race_is_decided_again_and_endless_races_are_a_typed_error,
    invalid_input_is_a_typed_error_and_writes_nothing,
    a_failing_timeout_is_retried_with_backoff_and_its_error_kept,
    competing_pollers_fire_each_timeout_once,
    a_saga_that_never_stops_sending_is_stopped,
);

/// (a) Debit, then credit; each outcome recorded, each deadline cancelled;
/// the events carry the request's metadata; a finished saga ignores input.
async fn happy_path_sends_commands_in_order_and_records_events(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let bank = Bank::new();
    let runner = runner(store.clone(), &t, &bank);
    let ctx = ctx();

    let state = runner.feed(&ctx, "t-1", start(LONG, LONG)).await.unwrap();

    assert_eq!(state.status, Status::Completed);
    assert_eq!(
        bank.sent(),
        vec![
            TransferCommand::Debit {
                account: "alice".into(),
                amount: 100
            },
            TransferCommand::Credit {
                account: "bob".into(),
                amount: 100
            },
        ]
    );
    for (saga_id, sent_with) in bank.calls() {
        assert_eq!(saga_id, "t-1");
        assert_eq!(sent_with.correlation_id, ctx.correlation_id);
    }
    let events = events_of(store.as_ref(), "t-1").await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["TransferStarted", "Debited", "TransferCompleted"]);
    for e in &events {
        assert_eq!(e.stream.as_str(), "transfer_saga-t-1");
        assert_eq!(e.stream.category().as_str(), "transfer_saga");
        assert_eq!(e.metadata, ctx.metadata());
    }
    assert!(
        runner
            .pending_timeouts(&tenant(), "t-1")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(t.timeout_rows().await, 0);

    // A finished saga ignores its input: nothing sent, nothing written.
    let again = runner.feed(&ctx, "t-1", start(LONG, LONG)).await.unwrap();
    assert_eq!(again.status, Status::Completed);
    let note = runner
        .feed(&ctx, "t-1", TransferInput::Note("late".into()))
        .await
        .unwrap();
    assert!(note.notes.is_empty());
    assert_eq!(bank.sent().len(), 2);
    assert_eq!(events_of(store.as_ref(), "t-1").await.len(), 3);
    assert_eq!(
        runner.load(&tenant(), "t-1").await.unwrap().status,
        Status::Completed
    );
}

/// (b) The credit is refused: the saga refunds the debit (compensation) and
/// ends compensated, with no deadline left behind.
async fn a_failing_step_is_compensated(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let bank = Bank::new().with(Kind::Credit, Behavior::Reject);
    let runner = runner(store.clone(), &t, &bank);

    let state = runner.feed(&ctx(), "t-2", start(LONG, LONG)).await.unwrap();

    assert_eq!(state.status, Status::Compensated);
    assert_eq!(bank.kinds(), [Kind::Debit, Kind::Credit, Kind::Refund]);
    assert_eq!(
        bank.sent()[2],
        TransferCommand::Refund {
            account: "alice".into(),
            amount: 100
        }
    );
    assert_eq!(
        event_types(store.as_ref(), "t-2").await,
        [
            "TransferStarted",
            "Debited",
            "CreditRejected",
            "TransferCompensated"
        ]
    );
    let rejected = &events_of(store.as_ref(), "t-2").await[2];
    assert_eq!(rejected.data["reason"], "account closed");
    assert_eq!(t.timeout_rows().await, 0);

    // A refused first step needs no compensation.
    let bank = Bank::new().with(Kind::Debit, Behavior::Reject);
    let runner = self::runner(store.clone(), &t, &bank);
    let state = runner
        .feed(&ctx(), "t-2b", start(LONG, LONG))
        .await
        .unwrap();
    assert_eq!(state.status, Status::Failed);
    assert_eq!(bank.kinds(), [Kind::Debit]);
    assert_eq!(
        event_types(store.as_ref(), "t-2b").await,
        ["TransferStarted", "DebitRejected"]
    );
    assert_eq!(t.timeout_rows().await, 0);
}

/// (c) The process dies while the credit is out. A new process with the
/// same event store and database fires the credit's deadline and the saga
/// compensates: nothing is lost.
async fn a_deadline_survives_a_crash_and_a_new_process_compensates(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let ctx = ctx();

    // The first process: the credit never answers, then the process dies.
    let bank_a = Bank::new().with(Kind::Credit, Behavior::Hang);
    let runner_a = runner(store.clone(), &t, &bank_a);
    let feeding = tokio::spawn({
        let (runner_a, ctx) = (Arc::clone(&runner_a), ctx.clone());
        async move {
            runner_a
                .feed(&ctx, "t-3", start(LONG, Duration::from_millis(300)))
                .await
        }
    });
    bank_a.wait_sent(2).await;
    feeding.abort();
    assert!(feeding.await.unwrap_err().is_cancelled());
    drop(runner_a);

    // The second process opens the same database and store.
    let bank_b = Bank::new();
    let runner_b = Arc::new(SagaRunner::<Transfer>::new(
        store.clone(),
        t.reopen().await,
        bank_b.clone(),
        options(),
    ));
    assert_eq!(
        runner_b.load(&tenant(), "t-3").await.unwrap().status,
        Status::Crediting
    );
    let pending = runner_b.pending_timeouts(&tenant(), "t-3").await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["credit"]
    );
    let timeouts = Arc::clone(&runner_b).start_timeouts(POLL);
    eventually("the saga finishes in the new process", || async {
        runner_b.load(&tenant(), "t-3").await.unwrap().status == Status::Compensated
    })
    .await;

    assert_eq!(bank_b.kinds(), [Kind::Refund]);
    let events = events_of(store.as_ref(), "t-3").await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "TransferStarted",
            "Debited",
            "CreditTimedOut",
            "TransferCompensated"
        ]
    );
    // What the deadline caused is tied to the business transaction that set it.
    let timed_out = &events[2];
    assert_eq!(timed_out.metadata.actor.as_deref(), Some("saga:transfer"));
    assert_eq!(
        timed_out.metadata.correlation_id.as_deref(),
        Some(ctx.correlation_id.as_str())
    );
    assert!(
        timeouts
            .wait_until(PATIENCE, |s| s.fired == 1 && s.failed == 0)
            .await,
        "{:?}",
        timeouts.status()
    );
    eventually("no deadline is left", || async {
        t.timeout_rows().await == 0
    })
    .await;
    timeouts.shutdown().await;
}

/// (d) Deadlines cancelled by a step's outcome never fire: neither in a
/// saga that finished nor in one that is still waiting for its next step.
async fn cancelled_timeouts_never_fire(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let quick = Duration::from_millis(500);

    let bank = Bank::new();
    let runner = runner(store.clone(), &t, &bank);
    let timeouts = Arc::clone(&runner).start_timeouts(POLL);
    let done = runner
        .feed(&ctx(), "t-4a", start(quick, quick))
        .await
        .unwrap();
    assert_eq!(done.status, Status::Completed);

    // Still waiting for the credit, whose deadline is far away; the debit's
    // deadline was cancelled when the debit succeeded.
    let hanging = Bank::new().with(Kind::Credit, Behavior::Hang);
    let waiting_runner = self::runner(store.clone(), &t, &hanging);
    let waiting_timeouts = Arc::clone(&waiting_runner).start_timeouts(POLL);
    let feeding = tokio::spawn({
        let waiting_runner = Arc::clone(&waiting_runner);
        async move {
            waiting_runner
                .feed(&ctx(), "t-4b", start(quick, LONG))
                .await
        }
    });
    hanging.wait_sent(2).await;

    // Well past both short deadlines and many polls.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(timeouts.status().fired, 0, "{:?}", timeouts.status());
    assert_eq!(waiting_timeouts.status().fired, 0);
    assert_eq!(
        event_types(store.as_ref(), "t-4a").await,
        ["TransferStarted", "Debited", "TransferCompleted"]
    );
    assert_eq!(
        event_types(store.as_ref(), "t-4b").await,
        ["TransferStarted", "Debited"]
    );
    assert!(
        runner
            .pending_timeouts(&tenant(), "t-4a")
            .await
            .unwrap()
            .is_empty()
    );
    let pending = runner.pending_timeouts(&tenant(), "t-4b").await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["credit"]
    );
    feeding.abort();
    timeouts.shutdown().await;
    waiting_timeouts.shutdown().await;
}

/// (e) Deadlines are written before the events of their decision. When the
/// append fails (a crash at that moment), the deadline is left without its
/// decision; when it fires, the saga does not expect it and nothing
/// happens. The same for a timeout fed to a saga in another step.
async fn a_spurious_timeout_is_ignored(t: TestDb) {
    let store = FlakyStore::default();
    store
        .fail_appends
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let store_handle: Arc<dyn EventStore> = Arc::new(store.clone());
    let bank = Bank::new();
    let runner = runner(Arc::clone(&store_handle), &t, &bank);

    let error = runner
        .feed(&ctx(), "t-5", start(Duration::from_millis(50), LONG))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::Unavailable, "{error}");
    assert!(
        bank.sent().is_empty(),
        "nothing is sent before its decision is recorded"
    );
    assert!(event_types(&store.inner, "t-5").await.is_empty());
    let pending = runner.pending_timeouts(&tenant(), "t-5").await.unwrap();
    assert_eq!(pending.len(), 1, "the deadline was written first");

    let timeouts = Arc::clone(&runner).start_timeouts(POLL);
    assert!(
        timeouts.wait_until(PATIENCE, |s| s.fired == 1).await,
        "{:?}",
        timeouts.status()
    );
    assert!(event_types(&store.inner, "t-5").await.is_empty());
    assert!(bank.sent().is_empty());
    assert!(
        runner
            .pending_timeouts(&tenant(), "t-5")
            .await
            .unwrap()
            .is_empty()
    );
    timeouts.shutdown().await;

    // A saga crediting gets the debit's timeout (say, cancelled but not yet
    // removed when the process died): ignored as well.
    let hanging = Bank::new().with(Kind::Credit, Behavior::Hang);
    let crediting = self::runner(Arc::clone(&store_handle), &t, &hanging);
    let feeding = tokio::spawn({
        let crediting = Arc::clone(&crediting);
        async move { crediting.feed(&ctx(), "t-5b", start(LONG, LONG)).await }
    });
    hanging.wait_sent(2).await;
    let state = runner
        .feed(&ctx(), "t-5b", TransferInput::Timeout("debit".into()))
        .await
        .unwrap();
    assert_eq!(state.status, Status::Crediting);
    assert_eq!(
        event_types(&store.inner, "t-5b").await,
        ["TransferStarted", "Debited"]
    );
    feeding.abort();
}

/// (f) Twenty feeds of one saga at once through one runner: they take
/// turns, and every note is recorded once, versions without holes.
async fn concurrent_feeds_of_one_saga_take_turns_and_lose_nothing(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let runner = runner(store.clone(), &t, &Bank::new());
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let runner = Arc::clone(&runner);
            tokio::spawn(async move {
                runner
                    .feed(&ctx(), "t-6", TransferInput::Note(format!("n{i}")))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let events = events_of(store.as_ref(), "t-6").await;
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    let mut notes = runner.load(&tenant(), "t-6").await.unwrap().notes;
    notes.sort();
    let mut expected: Vec<_> = (0..20).map(|i| format!("n{i}")).collect();
    expected.sort();
    assert_eq!(notes, expected);
}

/// (f) Two processes (two runners, no shared turns) feed one saga at the
/// same time: their appends collide, the losers decide again on fresh
/// state, and nothing is lost.
async fn two_processes_racing_on_one_saga_lose_nothing(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let patient = options().with_max_retries(200);
    let a = Arc::new(SagaRunner::<Transfer>::new(
        store.clone(),
        t.db.clone(),
        Bank::new(),
        patient.clone(),
    ));
    let b = Arc::new(SagaRunner::<Transfer>::new(
        store.clone(),
        t.reopen().await,
        Bank::new(),
        patient,
    ));
    let mut tasks = Vec::new();
    for i in 0..15 {
        for (name, runner) in [("a", &a), ("b", &b)] {
            let runner = Arc::clone(runner);
            tasks.push(tokio::spawn(async move {
                runner
                    .feed(&ctx(), "t-7", TransferInput::Note(format!("{name}{i}")))
                    .await
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let notes = a.load(&tenant(), "t-7").await.unwrap().notes;
    assert_eq!(notes.len(), 30, "{notes:?}");
    for i in 0..15 {
        assert!(notes.contains(&format!("a{i}")) && notes.contains(&format!("b{i}")));
    }
}

/// (f) Another writer appends first: the input is decided again on fresh
/// state and appended after it. When the other writer always wins, the feed
/// gives up with a typed error.
async fn a_lost_race_is_decided_again_and_endless_races_are_a_typed_error(t: TestDb) {
    use std::sync::atomic::Ordering;
    let store = FlakyStore::default();
    let handle: Arc<dyn EventStore> = Arc::new(store.clone());
    let runner = runner(Arc::clone(&handle), &t, &Bank::new());

    runner
        .feed(&ctx(), "t-8", TransferInput::Note("first".into()))
        .await
        .unwrap();
    store.race.store(2, Ordering::SeqCst);
    let state = runner
        .feed(&ctx(), "t-8", TransferInput::Note("mine".into()))
        .await
        .unwrap();
    assert_eq!(
        state.notes,
        [
            "first",
            "from another process",
            "from another process",
            "mine"
        ]
    );

    let impatient = Arc::new(SagaRunner::<Transfer>::new(
        handle,
        t.db.clone(),
        Bank::new(),
        options().with_max_retries(1),
    ));
    store.race.store(2, Ordering::SeqCst);
    let error = impatient
        .feed(&ctx(), "t-8", TransferInput::Note("lost".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SagaError::ConcurrencyConflict { attempts: 2, .. }),
        "{error}"
    );
    assert_eq!(error.code(), ErrorCode::ConcurrencyConflict);
    let notes = runner.load(&tenant(), "t-8").await.unwrap().notes;
    assert_eq!(notes.len(), 6);
    assert!(!notes.contains(&"lost".to_owned()));
}

/// (g) A bad saga id or bad request metadata is a typed error, and nothing
/// is written: no event, no deadline, no command.
async fn invalid_input_is_a_typed_error_and_writes_nothing(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let bank = Bank::new();
    let runner = runner(store.clone(), &t, &bank);
    let too_long = "x".repeat(300);
    for bad in ["", "a\u{7}b", "line\nbreak", too_long.as_str()] {
        let error = runner
            .feed(&ctx(), bad, start(LONG, LONG))
            .await
            .unwrap_err();
        assert!(matches!(error, SagaError::Invalid(_)), "{bad:?}: {error}");
        assert_eq!(error.code(), ErrorCode::InvalidInput);
        assert_eq!(
            runner.load(&tenant(), bad).await.unwrap_err().code(),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            runner
                .pending_timeouts(&tenant(), bad)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::InvalidInput
        );
    }
    let bad_trace = RequestContext::new(tenant()).with_traceparent("not-a-traceparent");
    let error = runner
        .feed(&bad_trace, "t-9", start(LONG, LONG))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidInput, "{error}");

    assert!(
        store
            .list_streams(&tenant(), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    runner.prepare().await.unwrap();
    assert_eq!(t.timeout_rows().await, 0);
    assert!(bank.sent().is_empty());
}

/// A timeout whose feed fails (the store is down) stays, counts its
/// attempts, keeps its last error, and fires once the store is back.
async fn a_failing_timeout_is_retried_with_backoff_and_its_error_kept(t: TestDb) {
    use std::sync::atomic::Ordering;
    let store = FlakyStore::default();
    let handle: Arc<dyn EventStore> = Arc::new(store.clone());

    // The debit never answers and the process dies.
    let hanging = Bank::new().with(Kind::Debit, Behavior::Hang);
    let first = runner(Arc::clone(&handle), &t, &hanging);
    let feeding = tokio::spawn({
        let first = Arc::clone(&first);
        async move {
            first
                .feed(&ctx(), "t-10", start(Duration::from_millis(50), LONG))
                .await
        }
    });
    hanging.wait_sent(1).await;
    feeding.abort();

    // The next process starts while the store is still failing.
    store.fail_reads.store(2, Ordering::SeqCst);
    let bank = Bank::new();
    let runner = Arc::new(SagaRunner::<Transfer>::new(
        Arc::clone(&handle),
        t.reopen().await,
        bank.clone(),
        options().with_retry_backoff(Duration::from_millis(300), Duration::from_secs(1)),
    ));
    let timeouts = Arc::clone(&runner).start_timeouts(POLL);
    assert!(timeouts.wait_until(PATIENCE, |s| s.failed >= 1).await);
    let pending = runner.pending_timeouts(&tenant(), "t-10").await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].key, "debit");
    assert!(pending[0].attempts >= 1, "{pending:?}");
    let error = pending[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("unavailable"), "{error}");
    assert!(pending[0].due_at > chrono::Utc::now(), "pushed back");
    assert!(
        timeouts.status().last_error.is_some(),
        "{:?}",
        timeouts.status()
    );

    assert!(
        timeouts
            .wait_until(PATIENCE, |s| s.fired == 1 && s.failed == 2)
            .await,
        "{:?}",
        timeouts.status()
    );
    assert_eq!(
        runner.load(&tenant(), "t-10").await.unwrap().status,
        Status::Compensated
    );
    assert_eq!(bank.kinds(), [Kind::Refund]);
    assert_eq!(
        event_types(&store.inner, "t-10").await,
        ["TransferStarted", "DebitTimedOut", "TransferCompensated"]
    );
    assert_eq!(t.timeout_rows().await, 0);
    timeouts.shutdown().await;
}

/// Two processes poll the same table: every due timeout is fired by exactly
/// one of them.
async fn competing_pollers_fire_each_timeout_once(t: TestDb) {
    use std::sync::atomic::Ordering;
    const N: u64 = 30;
    let store = FlakyStore::default();
    let handle: Arc<dyn EventStore> = Arc::new(store.clone());
    let bank = Bank::new();
    let a = runner(Arc::clone(&handle), &t, &bank);

    // Thirty sagas whose first append failed: thirty due, spurious deadlines.
    store.fail_appends.store(N as u32, Ordering::SeqCst);
    for i in 0..N {
        let error = a
            .feed(&ctx(), &format!("t-11-{i}"), start(Duration::ZERO, LONG))
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::Unavailable);
    }
    assert_eq!(t.timeout_rows().await, N as i64);

    let b = Arc::new(SagaRunner::<Transfer>::new(
        Arc::clone(&handle),
        t.reopen().await,
        bank.clone(),
        options().with_timeout_concurrency(4),
    ));
    let (ta, tb) = (
        Arc::clone(&a).start_timeouts(POLL),
        Arc::clone(&b).start_timeouts(POLL),
    );
    eventually("every timeout fired", || async {
        ta.status().fired + tb.status().fired >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ta.status().fired + tb.status().fired, N);
    assert_eq!(ta.status().failed + tb.status().failed, 0);
    assert_eq!(t.timeout_rows().await, 0);
    assert!(bank.sent().is_empty());
    ta.shutdown().await;
    tb.shutdown().await;
}

/// A saga whose every command fails and who asks again at once would loop
/// forever; the runner stops it with a typed error after `max_steps`.
async fn a_saga_that_never_stops_sending_is_stopped(t: TestDb) {
    let store = Arc::new(MemoryStore::new());
    let bank = Bank::new()
        .with(Kind::Credit, Behavior::Reject)
        .with(Kind::Refund, Behavior::Reject);
    let runner = Arc::new(SagaRunner::<Transfer>::new(
        store.clone(),
        t.db.clone(),
        bank.clone(),
        options().with_max_steps(10),
    ));
    let error = runner
        .feed(&ctx(), "t-12", start(LONG, LONG))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SagaError::TooManySteps { steps: 10, .. }),
        "{error}"
    );
    assert_eq!(error.code(), ErrorCode::Internal);
    assert_eq!(bank.sent().len(), 10);
    // What was decided so far is kept, the refund's deadline included: the
    // saga resumes from there.
    assert_eq!(
        runner.load(&tenant(), "t-12").await.unwrap().status,
        Status::Compensating
    );
    let pending = runner.pending_timeouts(&tenant(), "t-12").await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["refund"]
    );
}
