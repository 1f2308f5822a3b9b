//! Prometheus counters behind `/metrics`: requests and latency per route, bytes served,
//! update checks and check-ins, and the state of each channel's rollout. Counters are plain
//! atomics indexed by route, so counting costs no lock on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::ROUTES;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct RouteStats {
    /// Answers by status class: 1xx … 5xx.
    by_class: [AtomicU64; 5],
    /// Cumulative counts per bucket, and one for +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// Counters of one server process.
pub struct Metrics {
    /// Bytes of objects, deltas and packs sent to devices (requests without a valid token).
    pub object_bytes: AtomicU64,
    pub delta_bytes: AtomicU64,
    pub pack_bytes: AtomicU64,
    /// Bytes of objects, deltas and packs read back by holders of an upload token (the
    /// publisher packing a release): not traffic of the fleet.
    pub token_object_bytes: AtomicU64,
    pub token_delta_bytes: AtomicU64,
    pub token_pack_bytes: AtomicU64,
    /// Bytes of manifests (whole, as deltas, and their signatures), plans and check
    /// answers sent: what a device fetches besides contents.
    pub manifest_bytes: AtomicU64,
    pub plan_bytes: AtomicU64,
    pub check_bytes: AtomicU64,
    /// Delta builds started, and pairs not queued because the build queue was full.
    pub delta_builds_started: AtomicU64,
    pub delta_builds_refused: AtomicU64,
    pub checks: AtomicU64,
    /// Check-ins queued, written, dropped because the queue was full, and lost to a
    /// database error.
    pub checkins: AtomicU64,
    pub checkins_written: AtomicU64,
    pub checkins_dropped: AtomicU64,
    pub checkins_failed: AtomicU64,
    pub rollouts_stopped: AtomicU64,
    /// Checks that found an update but were held back by the rollout's egress budget.
    pub checks_paced: AtomicU64,
    /// Check-ins of enrolled devices not recorded: unsigned, badly signed, or out of time.
    pub checkins_unsigned: AtomicU64,
    /// Devices forgotten past the retention period.
    pub devices_pruned: AtomicU64,
    /// Stored files removed by the orphan sweep.
    pub orphans_removed: AtomicU64,
    routes: Vec<RouteStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            object_bytes: AtomicU64::new(0),
            delta_bytes: AtomicU64::new(0),
            pack_bytes: AtomicU64::new(0),
            token_object_bytes: AtomicU64::new(0),
            token_delta_bytes: AtomicU64::new(0),
            token_pack_bytes: AtomicU64::new(0),
            manifest_bytes: AtomicU64::new(0),
            plan_bytes: AtomicU64::new(0),
            check_bytes: AtomicU64::new(0),
            delta_builds_started: AtomicU64::new(0),
            delta_builds_refused: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            checkins: AtomicU64::new(0),
            checkins_written: AtomicU64::new(0),
            checkins_dropped: AtomicU64::new(0),
            checkins_failed: AtomicU64::new(0),
            rollouts_stopped: AtomicU64::new(0),
            checks_paced: AtomicU64::new(0),
            checkins_unsigned: AtomicU64::new(0),
            devices_pruned: AtomicU64::new(0),
            orphans_removed: AtomicU64::new(0),
            routes: ROUTES.iter().map(|_| RouteStats::default()).collect(),
        }
    }
}

/// Who a download is for, as counted in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A device (no valid upload token).
    Device,
    /// A holder of an upload token (the publisher reading back what it stored).
    Token,
}

impl Metrics {
    /// The counter of bytes of `kind` ("object", "delta", "pack") sent to `reader`.
    pub fn sent(&self, kind: &str, reader: Reader) -> &AtomicU64 {
        match (kind, reader) {
            ("object", Reader::Device) => &self.object_bytes,
            ("pack", Reader::Device) => &self.pack_bytes,
            (_, Reader::Device) => &self.delta_bytes,
            ("object", Reader::Token) => &self.token_object_bytes,
            ("pack", Reader::Token) => &self.token_pack_bytes,
            (_, Reader::Token) => &self.token_delta_bytes,
        }
    }

    fn observe(&self, route: usize, status: u16, secs: f64) {
        let Some(r) = self.routes.get(route) else {
            return;
        };
        let class = (status / 100).clamp(1, 5) as usize - 1;
        r.by_class[class].fetch_add(1, Ordering::Relaxed);
        let b = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        r.buckets[b].fetch_add(1, Ordering::Relaxed);
        r.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// The Prometheus text of the counters (the rollout gauges are appended by the caller).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let c = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            s,
            "# HELP deltaroot_served_bytes_total Bytes of objects, deltas and packs sent to devices.\n\
             # TYPE deltaroot_served_bytes_total counter\n\
             deltaroot_served_bytes_total{{kind=\"object\"}} {}\n\
             deltaroot_served_bytes_total{{kind=\"delta\"}} {}\n\
             deltaroot_served_bytes_total{{kind=\"pack\"}} {}\n\
             # HELP deltaroot_token_read_bytes_total Bytes of objects, deltas and packs read by upload token holders.\n\
             # TYPE deltaroot_token_read_bytes_total counter\n\
             deltaroot_token_read_bytes_total{{kind=\"object\"}} {}\n\
             deltaroot_token_read_bytes_total{{kind=\"delta\"}} {}\n\
             deltaroot_token_read_bytes_total{{kind=\"pack\"}} {}\n\
             # HELP deltaroot_served_metadata_bytes_total Bytes of manifests (whole, as deltas, and signatures), plans and check answers sent.\n\
             # TYPE deltaroot_served_metadata_bytes_total counter\n\
             deltaroot_served_metadata_bytes_total{{kind=\"manifest\"}} {}\n\
             deltaroot_served_metadata_bytes_total{{kind=\"plan\"}} {}\n\
             deltaroot_served_metadata_bytes_total{{kind=\"check\"}} {}",
            self.object_bytes.load(Ordering::Relaxed),
            self.delta_bytes.load(Ordering::Relaxed),
            self.pack_bytes.load(Ordering::Relaxed),
            self.token_object_bytes.load(Ordering::Relaxed),
            self.token_delta_bytes.load(Ordering::Relaxed),
            self.token_pack_bytes.load(Ordering::Relaxed),
            self.manifest_bytes.load(Ordering::Relaxed),
            self.plan_bytes.load(Ordering::Relaxed),
            self.check_bytes.load(Ordering::Relaxed)
        );
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        c(
            &mut s,
            "deltaroot_delta_builds_started_total",
            "Delta builds started for release pairs the publisher did not diff.",
            ld(&self.delta_builds_started),
        );
        c(
            &mut s,
            "deltaroot_delta_builds_refused_total",
            "Pairs not queued for a delta build because the queue was full.",
            ld(&self.delta_builds_refused),
        );
        c(
            &mut s,
            "deltaroot_update_checks_total",
            "Update checks answered.",
            ld(&self.checks),
        );
        c(
            &mut s,
            "deltaroot_checkins_total",
            "Check-ins queued for writing.",
            ld(&self.checkins),
        );
        c(
            &mut s,
            "deltaroot_checkins_written_total",
            "Check-ins written to the database.",
            ld(&self.checkins_written),
        );
        c(
            &mut s,
            "deltaroot_checkins_dropped_total",
            "Check-ins not recorded because the queue was full.",
            ld(&self.checkins_dropped),
        );
        c(
            &mut s,
            "deltaroot_checkins_failed_total",
            "Check-ins lost to a database error.",
            ld(&self.checkins_failed),
        );
        c(
            &mut s,
            "deltaroot_rollouts_stopped_total",
            "Rollouts this replica stopped on failures.",
            ld(&self.rollouts_stopped),
        );
        c(
            &mut s,
            "deltaroot_checks_paced_total",
            "Update checks held back by their rollout's egress budget.",
            ld(&self.checks_paced),
        );
        c(
            &mut s,
            "deltaroot_checkins_unsigned_total",
            "Check-ins of enrolled devices not recorded: unsigned, badly signed or out of time.",
            ld(&self.checkins_unsigned),
        );
        c(
            &mut s,
            "deltaroot_devices_pruned_total",
            "Devices forgotten because their last check-in is older than the retention period.",
            ld(&self.devices_pruned),
        );
        c(
            &mut s,
            "deltaroot_orphans_removed_total",
            "Stored files no release referenced, removed after the grace period.",
            ld(&self.orphans_removed),
        );
        s.push_str(
            "# HELP deltaroot_http_requests_total Answers by route and status class.\n\
             # TYPE deltaroot_http_requests_total counter\n",
        );
        for ((_, path), r) in ROUTES.iter().zip(&self.routes) {
            for (i, n) in r.by_class.iter().enumerate() {
                let n = ld(n);
                if n > 0 {
                    let _ = writeln!(
                        s,
                        "deltaroot_http_requests_total{{route=\"{path}\",status=\"{}xx\"}} {n}",
                        i + 1
                    );
                }
            }
        }
        s.push_str(
            "# HELP deltaroot_http_request_duration_seconds Time to the answer's headers.\n\
             # TYPE deltaroot_http_request_duration_seconds histogram\n",
        );
        for ((_, path), r) in ROUTES.iter().zip(&self.routes) {
            let total: u64 = r.buckets.iter().map(ld).sum();
            if total == 0 {
                continue;
            }
            let mut acc = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                acc += ld(&r.buckets[i]);
                let _ = writeln!(
                    s,
                    "deltaroot_http_request_duration_seconds_bucket{{route=\"{path}\",le=\"{b}\"}} {acc}"
                );
            }
            let _ = writeln!(
                s,
                "deltaroot_http_request_duration_seconds_bucket{{route=\"{path}\",le=\"+Inf\"}} {total}\n\
                 deltaroot_http_request_duration_seconds_sum{{route=\"{path}\"}} {}\n\
                 deltaroot_http_request_duration_seconds_count{{route=\"{path}\"}} {total}",
                ld(&r.sum_micros) as f64 / 1e6
            );
        }
        s
    }
}

/// The gauges of the fleet's state: devices known and entries in this replica's caches.
pub async fn fleet_gauges(app: &crate::App) -> crate::Result<String> {
    let devices = app.db.device_total().await?;
    Ok(format!(
        "# HELP deltaroot_devices Devices known (their last check-in is within the retention period).\n\
         # TYPE deltaroot_devices gauge\n\
         deltaroot_devices {devices}\n\
         # HELP deltaroot_cache_entries Products, channels and plan sizes this replica holds in memory.\n\
         # TYPE deltaroot_cache_entries gauge\n\
         deltaroot_cache_entries {}\n",
        app.fleet.cache_entries()
    ))
}

/// Middleware (a route layer, so the matched route is known): counts and times answers.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().position(|(_, r)| *r == p.as_str()));
    let start = Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    if let Some(i) = route {
        m.observe(i, resp.status().as_u16(), secs);
        tracing::debug!(
            %method,
            route = ROUTES[i].1,
            status = resp.status().as_u16(),
            micros = (secs * 1e6) as u64,
            "request"
        );
    }
    resp
}
