//! One update has a deadline (`update_deadline_secs`), checked between the chunks of every
//! download, on a clock the tests drive (no sleeps).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltaroot_client::agent::{Agent, Settings, DEFAULT_UPDATE_DEADLINE_SECS};

#[path = "common/folder.rs"]
mod folder;

use folder::{folder_and_agent, walk};

/// A clock that moves `step` seconds each time it is read.
fn racing_clock(step: u64) -> deltaroot_client::transport::Clock {
    let start = Instant::now();
    let reads = Arc::new(AtomicU64::new(0));
    Arc::new(move || start + Duration::from_secs(step * reads.fetch_add(1, Ordering::Relaxed)))
}

fn agent_with(tmp: &std::path::Path, deadline: Option<u64>) -> Agent {
    Agent::new(Settings {
        root: Some(tmp.join("root")),
        folder: Some(tmp.join("release")),
        product: Some("demo".into()),
        trust: vec![tmp.join("k.pub")],
        device_id: Some("test-folder".into()),
        update_deadline_secs: deadline,
        ..Settings::default()
    })
    .unwrap()
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
