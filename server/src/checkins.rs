//! Check-ins: queued by the update check without waiting, written in batches by one task.
//!
//! Whether a check-in counts as signed is decided here, per batch, not on the check's path:
//! the keys of the batch's devices are read in one query (not one per check), with their
//! previous check-ins (which the daily version counts start from), each
//! signature is verified off the async workers, and then
//! - a device with no enrolled key is recorded unsigned;
//! - an enrolled device's check-in is recorded signed when its signature verifies, and
//!   never recorded otherwise (counted in `deltaroot_checkins_unsigned_total`), so that a
//!   forged report neither counts nor hides the device's own.
//!
//! The answer to a check does not depend on any of this, so the device is answered at once.
//!
//! Under more check-ins than the writer keeps up with, the queue fills and check-ins are
//! dropped (counted), but not alike: [`RESERVED`] places after the [`QUEUE`] are kept for
//! reports of a failed or rolled-back update, which a rollout's failure-rate stop counts,
//! so that a storm of routine polls cannot hide a bad release from it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deltaroot_format::checkin::CheckIn as SignedCheckIn;
use deltaroot_format::PublicKey;
use tokio::sync::{mpsc, oneshot};

use crate::db::{CheckIn, CheckInResult, Db, KnownDevices};
use crate::Metrics;

/// Check-ins waiting to be written that any check may queue; past this, polls are still
/// answered but not recorded.
const QUEUE: usize = 1 << 16;
/// Places after [`QUEUE`] that only reports of a failed or rolled-back update take. The
/// writer takes up to [`BATCH`] check-ins per transaction, so under overload such reports
/// find places again after each one.
const RESERVED: usize = 4096;
/// Most check-ins written in one transaction.
const BATCH: usize = 16384;
/// Least time from the start of one check-in transaction to the next: what arrives meanwhile
/// goes in one transaction, so a B-tree page that many check-ins change is written once.
/// (Under the load benchmark, writing each batch as soon as the last one was done spent a
/// third of the SQLite writer's time writing pages to the WAL.)
const PACE: Duration = Duration::from_millis(200);

/// A check-in as the check received it: what is recorded, and the device's signature of it
/// if it sent one within the allowed clock skew.
pub struct Report {
    pub checkin: CheckIn,
    pub proof: Option<Proof>,
}

/// What a signed check-in's signature covers beyond what is recorded (`format::checkin`).
pub struct Proof {
    pub product: String,
    /// The `result` parameter exactly as sent.
    pub result: Option<String>,
    pub pin: Option<String>,
    pub at: u64,
    /// Hex, as the `sig` parameter carries it.
    pub sig: String,
}

impl Report {
    /// Whether `key` signed this check-in.
    fn verifies(&self, key: &PublicKey) -> bool {
        let (c, Some(p)) = (&self.checkin, &self.proof) else {
            return false;
        };
        SignedCheckIn {
            product: &p.product,
            channel: &c.channel,
            device: &c.device_id,
            current: c.current.as_deref(),
            result: p.result.as_deref(),
            attempted: c.attempted.as_deref(),
            pin: p.pin.as_deref(),
            at: p.at,
        }
        .verify(key, &p.sig)
    }
}

// Nearly every message is a report: boxing it would add an allocation to every check.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Report(Report),
    Flush(oneshot::Sender<()>),
}

/// The queue the update check puts check-ins on.
pub struct Queue {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Starts the writer on the current tokio runtime.
    pub fn start(db: Db, metrics: Arc<Metrics>) -> Queue {
        let (queue, rx) = Queue::new(metrics.clone());
        tokio::spawn(write(db, rx, metrics));
        queue
    }

    /// The queue and the end the writer reads.
    fn new(metrics: Arc<Metrics>) -> (Queue, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel(QUEUE + RESERVED);
        (Queue { tx, metrics }, rx)
    }

    /// Queues a check-in; never waits. A full queue drops it (counted in `/metrics`); one
    /// that reports no failure is dropped once [`QUEUE`] wait, leaving the [`RESERVED`]
    /// places to failure reports.
    pub fn record(&self, r: Report) {
        let failure = matches!(
            r.checkin.result,
            Some(CheckInResult::Failed | CheckInResult::RolledBack)
        );
        let room = failure || self.tx.capacity() > RESERVED;
        let counter = if room && self.tx.try_send(Msg::Report(r)).is_ok() {
            &self.metrics.checkins
        } else {
            &self.metrics.checkins_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until every check-in queued before this call is written (or refused).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Writes queued check-ins: whatever has piled up since the last batch started, at most one
/// transaction per [`PACE`] unless the queue holds a full batch.
async fn write(db: Db, mut rx: mpsc::Receiver<Msg>, metrics: Arc<Metrics>) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        buf.clear();
        if rx.recv_many(&mut buf, BATCH).await == 0 {
            return;
        }
        let started = tokio::time::Instant::now();
        let full = buf.len() == BATCH;
        let mut reports = Vec::with_capacity(buf.len());
        let mut acks = Vec::new();
        for m in buf.drain(..) {
            match m {
                Msg::Report(r) => reports.push(r),
                Msg::Flush(tx) => acks.push(tx),
            }
        }
        if !reports.is_empty() {
            let n = reports.len() as u64;
            let written = match settle(&db, reports, &metrics).await {
                Ok((batch, _)) if batch.is_empty() => Ok(0),
                Ok((batch, known)) => db
                    .record_checkins(&batch, &known)
                    .await
                    .map(|()| batch.len()),
                Err(e) => Err(e),
            };
            match written {
                Ok(w) => metrics
                    .checkins_written
                    .fetch_add(w as u64, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, count = n, "writing check-ins failed");
                    metrics.checkins_failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        for a in acks {
            let _ = a.send(());
        }
        if !full {
            tokio::time::sleep_until(started + PACE).await;
        }
    }
}

/// The check-ins of a batch to record, each marked signed or not, and what the database
/// knows of their devices; an enrolled device's check-in that its key did not sign is left
/// out and counted.
async fn settle(
    db: &Db,
    reports: Vec<Report>,
    metrics: &Metrics,
) -> crate::error::Result<(Vec<CheckIn>, KnownDevices)> {
    let devices: Vec<(i64, &str)> = reports
        .iter()
        .map(|r| (r.checkin.product_id, r.checkin.device_id.as_str()))
        .collect();
    let known = db.known_devices(&devices).await?;
    drop(devices);
    if !known.any_key() {
        return Ok((reports.into_iter().map(|r| r.checkin).collect(), known));
    }
    // Ed25519 verification is CPU work: done beside the async workers, not on them.
    let (batch, refused, known) = tokio::task::spawn_blocking(move || {
        let mut parsed: HashMap<&str, Option<PublicKey>> = HashMap::new();
        let mut batch = Vec::with_capacity(reports.len());
        let mut refused = 0u64;
        for r in reports {
            match known
                .get(r.checkin.product_id, &r.checkin.device_id)
                .and_then(|k| k.key.as_ref())
            {
                None => batch.push(r.checkin),
                Some(text) => {
                    let key = parsed
                        .entry(text.as_str())
                        .or_insert_with(|| PublicKey::from_text(text).ok());
                    match key {
                        Some(key) if r.verifies(key) => {
                            let mut c = r.checkin;
                            c.signed = true;
                            batch.push(c);
                        }
                        Some(_) => refused += 1,
                        None => {
                            tracing::error!(device = %r.checkin.device_id, "the enrolled key of a device does not parse");
                            refused += 1;
                        }
                    }
                }
            }
        }
        drop(parsed);
        (batch, refused, known)
    })
    .await
    .map_err(|e| crate::error::Error::Corrupt(format!("verifying check-ins: {e}")))?;
    metrics
        .checkins_unsigned
        .fetch_add(refused, Ordering::Relaxed);
    Ok((batch, known))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn report(device: usize, result: Option<CheckInResult>) -> Report {
        Report {
            checkin: CheckIn {
                product_id: 1,
                device_id: format!("dev-{device}"),
                channel: "stable".into(),
                current: Some("1.0".into()),
                result,
                attempted: result.map(|_| "2.0".into()),
                at: 1_700_000_000,
                signed: false,
            },
            proof: None,
        }
    }

    #[test]
    fn a_full_queue_keeps_its_last_places_for_failure_reports() {
        let metrics = Arc::new(Metrics::default());
        let (q, mut rx) = Queue::new(metrics.clone());
        let full = QUEUE + RESERVED;
        let count = |m: &AtomicU64| m.load(Ordering::Relaxed) as usize;
        // Routine polls, no writer draining the queue: all but the reserved places fill.
        for i in 0..full {
            q.record(report(i, Some(CheckInResult::Ok)));
        }
        assert_eq!(count(&metrics.checkins), QUEUE);
        assert_eq!(count(&metrics.checkins_dropped), RESERVED);
        q.record(report(0, None));
        assert_eq!(
            count(&metrics.checkins_dropped),
            RESERVED + 1,
            "a poll with no result"
        );
        // Reports of failed and rolled-back updates still get in, up to the queue's bound.
        for i in 0..RESERVED {
            let r = [CheckInResult::Failed, CheckInResult::RolledBack][i % 2];
            q.record(report(full + i, Some(r)));
        }
        assert_eq!(count(&metrics.checkins), full);
        q.record(report(0, Some(CheckInResult::Failed)));
        assert_eq!(
            count(&metrics.checkins_dropped),
            RESERVED + 2,
            "the queue is bounded"
        );
        // The writer gets them in order, the failures last.
        let mut got = Vec::new();
        while let Ok(Msg::Report(r)) = rx.try_recv() {
            got.push(r.checkin);
        }
        assert_eq!(got.len(), full);
        assert!(got[..QUEUE]
            .iter()
            .all(|c| c.result == Some(CheckInResult::Ok)));
        assert_eq!(got[QUEUE].device_id, format!("dev-{full}"));
        assert_eq!(got[full - 1].result, Some(CheckInResult::RolledBack));
        // Once the writer has taken them, routine polls are queued again.
        q.record(report(1, Some(CheckInResult::Ok)));
        assert_eq!(count(&metrics.checkins), full + 1);
    }
}
