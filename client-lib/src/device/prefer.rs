//! Fewer bytes or less time: beside a delta that is slow to rebuild (an `xz` delta
//! compresses a kernel again, 20 s of one core on the corpus), a plan may offer the whole
//! object (`PlanItem::object_bytes`). The device's policy chooses: `bytes` always takes the
//! delta, `time` always the object, `auto` the object when its extra bytes take less time to
//! download than the delta takes to rebuild, on the link speed and rebuild speed this
//! device measured in its last updates (`state/rates.json`), or on defaults before it
//! measured any.

use std::str::FromStr;
use std::time::Duration;

use deltaroot_format::{Fetch, Plan};
use serde::{Deserialize, Serialize};

/// The policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The fewest bytes: every delta the plan names.
    Bytes,
    /// The least time: the whole object wherever one is offered.
    Time,
    /// Whichever costs less time on this device's link and processor.
    #[default]
    Auto,
}

impl FromStr for Prefer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bytes" => Ok(Prefer::Bytes),
            "time" => Ok(Prefer::Time),
            "auto" => Ok(Prefer::Auto),
            other => Err(format!("{other:?} is not a policy: bytes, time or auto")),
        }
    }
}

/// Where the measured speeds are kept.
pub(super) const RATES: &str = "state/rates.json";
/// Download speed assumed before one is measured, bytes per second.
pub const DEFAULT_LINK_RATE: f64 = 1_000_000.0;
/// Rebuild speed of a slow delta (content bytes per second) assumed before one is measured:
/// about what the corpus's kernel rebuilds at on one x86-64 core (34 MB in 20 s).
pub const DEFAULT_REBUILD_RATE: f64 = 1_500_000.0;
/// Downloads shorter than this say little about the link and are not measured.
const MIN_MEASURED_BYTES: u64 = 1 << 20;

/// Speeds measured by the device's last updates, bytes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Bytes downloaded over the time spent fetching (rebuilding included, so a lower bound).
    pub link: Option<f64>,
    /// Content bytes rebuilt from slow deltas over the time spent on them.
    pub rebuild: Option<f64>,
}

impl Rates {
    /// These rates with the ones of an update that downloaded `bytes` in `fetching` and
    /// rebuilt `rebuilt` content bytes of slow deltas in `rebuilding`, where it measured
    /// enough to count.
    pub fn updated(
        self,
        bytes: u64,
        fetching: Duration,
        rebuilt: u64,
        rebuilding: Duration,
    ) -> Self {
        let rate =
            |n: u64, d: Duration| (d.as_secs_f64() > 0.0).then(|| n as f64 / d.as_secs_f64());
        Rates {
            link: rate(bytes, fetching)
                .filter(|_| bytes >= MIN_MEASURED_BYTES)
                .or(self.link),
            rebuild: rate(rebuilt, rebuilding)
                .filter(|_| rebuilt > 0)
                .or(self.rebuild),
        }
    }
}

/// Applies `prefer` to `plan`: for every item offered the object beside its delta, fetched
/// alone, the fetch becomes the object when the policy says so. `max_rate` (the device's
/// bandwidth limit) caps the link speed. Returns how many items now fetch the object.
pub fn choose(plan: &mut Plan, prefer: Prefer, rates: Rates, max_rate: Option<u64>) -> usize {
    let link = rates
        .link
        .unwrap_or(DEFAULT_LINK_RATE)
        .min(max_rate.map_or(f64::INFINITY, |r| r as f64))
        .max(1.0);
    let rebuild = rates.rebuild.unwrap_or(DEFAULT_REBUILD_RATE).max(1.0);
    let mut switched = 0;
    for item in &mut plan.items {
        let (Some(object), Fetch::Delta { bytes, .. }, None) =
            (item.object_bytes, &item.fetch, item.pack)
        else {
            continue;
        };
        let take_object = match prefer {
            Prefer::Bytes => false,
            Prefer::Time => true,
            Prefer::Auto => {
                let download = object.saturating_sub(*bytes) as f64 / link;
                let rebuilding = item.size as f64 / rebuild;
                download < rebuilding
            }
        };
        if take_object {
            tracing::info!(content = %item.target, delta = bytes, object, ?prefer, "fetching the whole object instead of a delta slow to rebuild");
            item.fetch = Fetch::Object { bytes: object };
            switched += 1;
        }
    }
    if switched > 0 {
        plan.download_bytes = plan.total();
    }
    switched
}

impl super::Device {
    /// Keeps the speeds this update measured (`downloaded` bytes in `fetching`, and the slow
    /// deltas it rebuilt) for the next one's choice. Best effort: a failure is logged.
    pub(super) fn record_rates(&self, before: Rates, downloaded: u64, fetching: Duration) {
        let (rebuilt, rebuilding) = *self.rebuilt.lock().expect("not poisoned");
        let now = before.updated(downloaded, fetching, rebuilt, rebuilding);
        if now == before {
            return;
        }
        let written = serde_json::to_vec(&now)
            .map_err(|e| e.to_string())
            .and_then(|b| self.write_atomic(RATES, &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(path = RATES, error = %e, "the measured speeds are not kept");
        }
    }

    /// Counts `size` content bytes rebuilt from a slow delta in `took`.
    pub(super) fn count_rebuilt(&self, size: u64, took: Duration) {
        let mut r = self.rebuilt.lock().expect("not poisoned");
        r.0 += size;
        r.1 += took;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltaroot_format::{Hash, PlanItem};

    fn plan() -> Plan {
        let item = |n: u8, object_bytes, pack| PlanItem {
            target: Hash([n; 32]),
            size: 30_000_000,
            fetch: Fetch::Delta {
                source: Hash([0; 32]),
                bytes: 2_000_000,
            },
            pack,
            object_bytes,
        };
        let mut p = Plan {
            product: "demo".into(),
            from: Some("1".into()),
            to: "2".into(),
            // Offered alone; not offered; offered but packed (never switched: the pack
            // would no longer match its items).
            items: vec![
                item(1, Some(8_000_000), None),
                item(2, None, None),
                item(3, Some(8_000_000), Some(0)),
            ],
            packs: vec![deltaroot_format::PackRef {
                hash: Hash([9; 32]),
                bytes: 1_500_000,
            }],
            download_bytes: 0,
        };
        p.download_bytes = p.total();
        p
    }

    #[test]
    fn the_policy_chooses_the_object_when_it_costs_less_time() {
        let objects = |p: &Plan| {
            p.items
                .iter()
                .filter(|i| matches!(i.fetch, Fetch::Object { .. }))
                .count()
        };
        let mut p = plan();
        assert_eq!(choose(&mut p, Prefer::Bytes, Rates::default(), None), 0);
        assert_eq!(p, plan());
        let mut p = plan();
        assert_eq!(choose(&mut p, Prefer::Time, Rates::default(), None), 1);
        assert_eq!(objects(&p), 1);
        assert_eq!(p.download_bytes, plan().download_bytes + 6_000_000);
        // Auto, defaults: 6 MB more at 1 MB/s (6 s) against 30 MB rebuilt at 1.5 MB/s (20 s).
        let mut p = plan();
        assert_eq!(choose(&mut p, Prefer::Auto, Rates::default(), None), 1);
        // A slow link (100 kB/s: 60 s), measured or set as the bandwidth limit: the delta.
        let slow = Rates {
            link: Some(100_000.0),
            rebuild: None,
        };
        assert_eq!(choose(&mut plan(), Prefer::Auto, slow, None), 0);
        assert_eq!(
            choose(&mut plan(), Prefer::Auto, Rates::default(), Some(100_000)),
            0
        );
        // A fast processor (30 MB/s: 1 s) on the default link: the delta.
        let fast = Rates {
            link: None,
            rebuild: Some(30_000_000.0),
        };
        assert_eq!(choose(&mut plan(), Prefer::Auto, fast, None), 0);
    }

    #[test]
    fn rates_are_measured_only_from_enough_bytes() {
        let r = Rates::default().updated(10 << 20, Duration::from_secs(2), 0, Duration::ZERO);
        assert_eq!(r.link, Some((10 << 20) as f64 / 2.0));
        assert_eq!(r.rebuild, None);
        // A small update keeps the link speed measured before; a rebuild is measured.
        let r2 = r.updated(
            1000,
            Duration::from_secs(1),
            3_000_000,
            Duration::from_secs(2),
        );
        assert_eq!(r2.link, r.link);
        assert_eq!(r2.rebuild, Some(1_500_000.0));
        assert_eq!("time".parse::<Prefer>(), Ok(Prefer::Time));
        assert!("fast"
            .parse::<Prefer>()
            .unwrap_err()
            .contains("bytes, time or auto"));
    }
}
