//! Acknowledged appends survive `kill -9`.
//!
//! The parent test runs this test binary again as a child process, with only
//! [`child_appends_until_killed`] selected and the database path in an
//! environment variable. The child appends from several tasks and prints one
//! `ACK` line per acknowledged event. The parent reads a few hundred acks,
//! SIGKILLs the child (so its writer dies mid-transaction), reopens the file
//! and checks every acknowledged event is there with the same position and
//! version, and that appending carries on from there.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use cairn_core::{EventId, NewEvent, StreamId, TenantId};
use cairn_store::{AllFilter, EventStore, ExpectedVersion, ReadStream};
use cairn_store_sqlite::SqliteStore;
use serde_json::json;

mod common;

const DB_ENV: &str = "CAIRN_SQLITE_DURABILITY_DB";
const CHILD: &str = "child_appends_until_killed";
const WRITERS: u64 = 4;
const ACKS_BEFORE_KILL: usize = 600;

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    version: u64,
    position: u64,
    id: EventId,
}

fn parse(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let ack = Ack {
        stream: parts.next()?.to_owned(),
        version: parts.next()?.parse().ok()?,
        position: parts.next()?.parse().ok()?,
        id: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(ack)
}

/// The child: appends until it is killed. Does nothing in a normal run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appends_until_killed() {
    let Some(path) = std::env::var_os(DB_ENV) else {
        return;
    };
    let store = SqliteStore::open(&path)
        .await
        .expect("child opens the store");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new(format!("dur-{w}")).unwrap();
                let mut expected = ExpectedVersion::NoStream;
                for n in 0u64.. {
                    // Writers differ in batch size, so groups mix sizes.
                    let events: Vec<_> = (0..=w % 3)
                        .map(|i| NewEvent::new("Tick", json!({ "w": w, "n": n, "i": i })))
                        .collect();
                    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                    let out = store
                        .append(&tenant(), &stream, expected, events)
                        .await
                        .expect("child append");
                    for (i, id) in ids.iter().enumerate() {
                        let i = i as u64;
                        // One println per event: stdout is line buffered, so
                        // a line is out of the process once it returns.
                        println!(
                            "ACK {stream} {} {} {id}",
                            out.first_version + i,
                            out.first_position + i
                        );
                    }
                    expected = ExpectedVersion::Exact(out.last_version);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Kills the child if the parent fails before it does, so no appender
/// outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    if std::env::var_os(DB_ENV).is_some() {
        return;
    }
    let (_dir, path) = common::temp_db();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD, "--nocapture", "--test-threads=1"])
        .env(DB_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    let lines = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut acks = Vec::new();
    while acks.len() < ACKS_BEFORE_KILL {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the child stopped acknowledging appends");
        acks.extend(parse(&line));
    }
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the child died of SIGKILL: {status}"
        );
    }
    assert!(!status.success(), "the child was killed: {status}");
    // Lines already in the pipe were acknowledged before the kill, too.
    lines.join().unwrap();
    acks.extend(rx.try_iter().filter_map(|l| parse(&l)));
    assert!(acks.len() >= ACKS_BEFORE_KILL);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(verify(path, acks));
}

async fn verify(path: std::path::PathBuf, acks: Vec<Ack>) {
    let store = SqliteStore::open(&path).await.expect("reopen after kill");
    let all = store
        .read_all(0, &AllFilter::all_tenants(), usize::MAX)
        .await
        .unwrap();
    // The log is dense from 1: no hole where the child died.
    assert!(all.iter().zip(1u64..).all(|(e, p)| e.position == p));
    let by_position: HashMap<u64, _> = all.iter().map(|e| (e.position, e)).collect();
    for ack in &acks {
        let e = by_position
            .get(&ack.position)
            .unwrap_or_else(|| panic!("acknowledged {ack:?} is missing"));
        assert_eq!(
            (e.stream.as_str(), e.version, e.id),
            (ack.stream.as_str(), ack.version, ack.id),
            "{ack:?}"
        );
    }
    assert_eq!(*store.head().borrow(), all.len() as u64);

    // Every stream is dense and accepts the next version.
    let log_end = all.len() as u64;
    for (w, next_position) in (0..WRITERS).zip(log_end + 1..) {
        let stream = StreamId::new(format!("dur-{w}")).unwrap();
        let events = store
            .read_stream(&tenant(), &stream, ReadStream::all())
            .await
            .unwrap();
        assert!(!events.is_empty(), "{stream}");
        assert!(events.iter().zip(0u64..).all(|(e, v)| e.version == v));
        let last = events.last().unwrap().version;
        let out = store
            .append(
                &tenant(),
                &stream,
                ExpectedVersion::Exact(last),
                vec![NewEvent::new("AfterCrash", json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(out.first_version, last + 1);
        assert_eq!(out.first_position, next_position);
    }
    eprintln!(
        "{} acknowledged events verified; {} were in the log when the child died",
        acks.len(),
        all.len()
    );
}
