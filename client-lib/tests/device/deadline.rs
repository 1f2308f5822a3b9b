//! The course of one update: its deadline (`update_deadline_secs`), checked between the
//! chunks of every download, and its bandwidth limit (`max_rate`), paced between the same
//! chunks, on a clock the tests drive (no sleeps); and the steps the agent logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltaroot_client::agent::{Agent, Settings, DEFAULT_UPDATE_DEADLINE_SECS};

use super::folder::{folder_and_agent, walk};

/// A clock that moves `step` seconds each time it is read.
fn racing_clock(step: u64) -> deltaroot_client::transport::Clock {
    let start = Instant::now();
    let reads = Arc::new(AtomicU64::new(0));
    Arc::new(move || start + Duration::from_secs(step * reads.fetch_add(1, Ordering::Relaxed)))
}

fn settings(tmp: &std::path::Path, deadline: Option<u64>) -> Settings {
    Settings {
        root: Some(tmp.join("root")),
        folder: Some(tmp.join("release")),
        product: Some("demo".into()),
        trust: vec![tmp.join("k.pub")],
        device_id: Some("test-folder".into()),
        update_deadline_secs: deadline,
        ..Settings::default()
    }
}

fn agent_with(tmp: &std::path::Path, deadline: Option<u64>) -> Agent {
    Agent::new(settings(tmp, deadline)).unwrap()
}

#[test]
fn an_update_past_its_deadline_stops_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_f, _agent, _v1) = folder_and_agent(tmp.path());
    // Every read of the clock is 500 s later: the downloads' chunks pass 800 s.
    let mut agent = agent_with(tmp.path(), Some(800));
    agent.clock = racing_clock(500);
    let err = agent.install("1").unwrap_err().to_string();
    assert!(err.contains("deadline of 800 s"), "{err}");
    assert!(err.contains("objects/"), "{err}");
    assert!(agent.device.current().unwrap().is_none());
    assert!(walk(&tmp.path().join("root/staging/tree")).is_empty());

    // The same clock with a deadline far enough: the update goes through, and the deadline
    // ended with it (a later update starts its own).
    let mut agent = agent_with(tmp.path(), None);
    assert_eq!(agent.update_deadline_secs, DEFAULT_UPDATE_DEADLINE_SECS);
    agent.clock = racing_clock(1);
    agent.install("1").unwrap();
}

/// `max_rate` holds all the downloads of an update to that many bytes a second: on a clock
/// that only the limit's waits move, the install waits what its bytes take at the rate.
#[test]
fn an_update_keeps_within_its_bandwidth_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (_f, _agent, _v1) = folder_and_agent(tmp.path());
    let mut agent = Agent::new(Settings {
        max_rate: Some(10_000),
        ..settings(tmp.path(), None)
    })
    .unwrap();
    let start = Instant::now();
    let waited = Arc::new(AtomicU64::new(0));
    let w = waited.clone();
    agent.clock = Arc::new(move || start + Duration::from_micros(w.load(Ordering::Relaxed)));
    let w = waited.clone();
    agent.sleep = Arc::new(move |d: Duration| {
        w.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    });
    agent.install("1").unwrap();
    let bytes = agent.transport.downloaded();
    assert!(bytes > 10_000, "{bytes}");
    let secs = waited.load(Ordering::Relaxed) as f64 / 1e6;
    let want = bytes as f64 / 10_000.0;
    assert!(
        (secs - want).abs() < 0.01,
        "waited {secs} s for {bytes} bytes"
    );
}

thread_local! {
    /// What this thread logged (each test runs on a thread of its own).
    static LOGGED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where the log lines go: the logging thread's own buffer. One subscriber for the whole
/// binary: tracing caches whether a log line is wanted when it is first met, so a
/// subscriber set for one test only would miss lines another test met first.
struct ThreadLog;

impl std::io::Write for ThreadLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGGED.with(|l| l.borrow_mut().extend_from_slice(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An update logs each of its steps (what the check offered, the plan, the downloads, the
/// tree, the switch), so that an unattended device's journal says where it stopped.
#[test]
fn an_update_logs_its_steps() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(|| ThreadLog)
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (_f, _agent, _v1) = folder_and_agent(tmp.path());
    let agent = agent_with(tmp.path(), None);
    agent.update().unwrap();
    let log = LOGGED.with(|l| String::from_utf8(l.borrow().clone()).unwrap());
    let steps = [
        "checked",
        "offered=\"1\"",
        "plan read: downloading",
        "downloads verified: building the new tree in staging",
        "tree built: verifying it against the manifest",
        "switched: current is now 1",
    ];
    let mut at = 0;
    for step in steps {
        let found = log[at..].find(step);
        assert!(found.is_some(), "{step:?} after byte {at} of:\n{log}");
        at += found.unwrap();
    }
}
