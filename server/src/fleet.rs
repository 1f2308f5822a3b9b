//! The fleet: what each device is offered (channels, staged rollouts, floors, pins, signed
//! downgrades), check-ins written in batches so a poll never waits on the database, and the
//! watcher that stops a rollout when too many devices report failures.
//!
//! Update checks are answered from memory: product and channel state and plan sizes are
//! cached for `cache_ttl` by the fleet's clock (this replica drops its copy at once when an
//! operator changes something through it; other replicas see the change within
//! `cache_ttl` and one database read, twice `cache_ttl` at most: an expired product or
//! channel still answers while one check reads it again, [`Bounded::lookup`]). Each cache
//! holds at most `cache_capacity` entries, and only what exists: a product or channel nobody
//! published is looked up each time, never remembered.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use deltaroot_format::api::{DelegationOffer, DowngradeOffer};
use deltaroot_format::{Downgrade, Name};

use crate::cache::{Bounded, Lookup};
use crate::clock::Clock;
use crate::db::{ChannelRow, CheckInResult, Db, ReleaseRow, RolloutState};
use crate::error::{Error, Result};
use crate::Metrics;

/// How often devices should poll.
#[derive(Clone, Copy, Debug)]
pub struct PollSettings {
    pub secs: u64,
    /// Spread around `secs`, as a fraction: 0.2 answers between 0.8 and 1.2 × `secs`.
    pub jitter: f64,
}

/// A product and all its releases, as the check needs them.
#[derive(Debug)]
pub struct ProductView {
    pub id: i64,
    pub name: Name,
    pub key: String,
    /// The release key's delegation to this server's answer key, if one was published.
    pub delegation: Option<DelegationOffer>,
    /// The release key's rotations, oldest first, as devices receive them.
    pub rotations: Vec<DelegationOffer>,
    pub by_version: HashMap<Name, Arc<ReleaseRow>>,
    pub by_id: HashMap<i64, Arc<ReleaseRow>>,
}

/// A channel's state with its downgrade statement decoded once.
#[derive(Debug)]
pub struct ChannelView {
    pub row: ChannelRow,
    /// The version the signed downgrade names, and the statement as devices receive it.
    pub downgrade: Option<(String, DowngradeOffer)>,
}

/// What a device asks with its check.
#[derive(Clone, Debug, Default)]
pub struct Ask<'a> {
    pub current: Option<&'a str>,
    pub device: Option<&'a str>,
    pub result: Option<CheckInResult>,
    pub attempted: Option<&'a str>,
    pub pin: Option<&'a str>,
}

/// The answer to one check.
#[derive(Clone, Debug, Default)]
pub struct Decision {
    pub latest: Option<Name>,
    pub paused: bool,
    /// The release to move to, with the operator's statement when it is a downgrade.
    pub offer: Option<(Arc<ReleaseRow>, Option<DowngradeOffer>)>,
}

/// A value with the time (milliseconds, by the fleet's clock) it was read. Only what exists
/// is cached: a name nobody published costs a query each time, not memory for ever.
type Cached<K, V> = Bounded<K, Arc<V>>;

/// Most products, channels and plan sizes each cache holds by default.
pub const CACHE_CAPACITY: u64 = 10_000;

/// How the fleet caches what update checks read.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// How long a value is answered from memory (another replica's change shows after it).
    pub ttl: Duration,
    /// Most entries of each cache (products, channels, plan sizes).
    pub capacity: u64,
}

pub struct Fleet {
    db: Db,
    clock: Clock,
    pub poll: PollSettings,
    products: Cached<String, ProductView>,
    channels: Cached<(i64, String), ChannelView>,
    plan_sizes: Bounded<(i64, i64), u64>,
    /// Answers made this second, by what they depend on (at most `cache_capacity`).
    answers_made: Bounded<CheckKey, Arc<MadeAnswer>>,
    checkins: crate::checkins::Queue,
    metrics: Arc<Metrics>,
    /// Which delegations name this server's answer key.
    answers: Arc<crate::answers::Signer>,
}

/// How long a made answer is kept: its key names the second it was issued in.
const ANSWER_MS: i64 = 1000;

/// How many poll intervals answers spread devices over.
const JITTER_STEPS: u32 = 16;

/// What the answer to a check depends on. Equal keys within the same second (`second`, the
/// answer's issue time) get the same bytes: the product's and channel's cached state (by
/// address; see [`Fleet::answer`]), the channel asked for, and what was decided.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckKey {
    pub product: usize,
    pub channel_state: usize,
    pub channel: Name,
    pub current: Option<Name>,
    pub latest: Option<Name>,
    /// The version offered, its download size, whether as a signed downgrade.
    pub offer: Option<(Name, u64, bool)>,
    pub paused: bool,
    pub paced: bool,
    pub next_check_secs: u64,
    pub second: i64,
}

/// An answer's bytes, with the state they were made from (held so that its address is not
/// reused while the entry lives).
struct MadeAnswer {
    _product: Arc<ProductView>,
    _channel: Option<Arc<ChannelView>>,
    body: Bytes,
}

/// Where a device falls in a rollout: a stable number in [0, 100) from its id.
pub fn bucket(product: &str, channel: &str, device: &str) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(b"deltaroot-rollout\0");
    h.update(product.as_bytes());
    h.update(b"\0");
    h.update(channel.as_bytes());
    h.update(b"\0");
    h.update(device.as_bytes());
    let b = h.finalize();
    let n = u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"));
    (n % 1_000_000) as f64 / 10_000.0
}

/// Is this device in a wave of `percent`? Devices that send no id join only at 100 %.
pub fn selected(product: &str, channel: &str, device: Option<&str>, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    match device {
        Some(d) => bucket(product, channel, d) < percent,
        None => false,
    }
}

/// The rollout whose egress budget an offer of `target` is charged to, with the budget:
/// the channel's active rollout when it is paced and `target` is its release (a floor, a
/// pinned version or a downgrade is never paced).
pub fn paced_by(
    ch: Option<&ChannelView>,
    ask: &Ask<'_>,
    target: &ReleaseRow,
) -> Option<(i64, u64)> {
    if ask.pin.is_some() {
        return None;
    }
    let ch = ch?;
    let ro = ch.row.rollout.as_ref()?;
    let paced = ro.state == RolloutState::Active
        && ro.release_id == ch.row.release_id
        && ro.release_id == target.id;
    let budget = ro.max_bytes_per_hour.filter(|_| paced)?;
    Some((ro.id, budget.max(0) as u64))
}

/// The pure decision: what `ask` gets from this channel at `now`.
pub fn decide(
    p: &ProductView,
    channel_name: &str,
    ch: Option<&ChannelView>,
    ask: &Ask<'_>,
    now: i64,
) -> Result<Decision> {
    let mut d = Decision {
        latest: ch.and_then(|c| p.by_id.get(&c.row.release_id).map(|r| r.version.clone())),
        paused: ch.is_some_and(|c| c.row.paused),
        offer: None,
    };
    let current = ask.current.and_then(|v| p.by_version.get(v));
    let downgrade_for = |t: &ReleaseRow| {
        ch.and_then(|c| c.downgrade.as_ref())
            .filter(|(v, _)| *v == t.version)
            .map(|(_, o)| o.clone())
    };
    // A device that pins a version is steered by its own configuration.
    if let Some(pin) = ask.pin {
        let t = p
            .by_version
            .get(pin)
            .ok_or_else(|| Error::NotFound(format!("product {} has no release {pin}", p.name)))?;
        if ask.current != Some(pin) {
            d.offer = Some((t.clone(), downgrade_for(t)));
        }
        return Ok(d);
    }
    let Some(ch) = ch else { return Ok(d) };
    if ch.row.paused {
        return Ok(d);
    }
    let mut target = p.by_id.get(&ch.row.release_id).cloned();
    if let Some(ro) = ch
        .row
        .rollout
        .as_ref()
        .filter(|r| r.release_id == ch.row.release_id)
    {
        let inside = match ro.state {
            RolloutState::Active => selected(&p.name, channel_name, ask.device, ro.percent_at(now)),
            RolloutState::Stopped => false,
            RolloutState::Superseded => true,
        };
        if !inside {
            target = ro
                .previous_release_id
                .and_then(|id| p.by_id.get(&id).cloned());
        }
        if let (Some(floor), Some(cur), Some(t)) = (
            ro.floor_release_id.and_then(|id| p.by_id.get(&id)),
            current,
            target.as_ref(),
        ) {
            if cur.created < floor.created && floor.created < t.created {
                target = Some(floor.clone());
            }
        }
    }
    let Some(t) = target else { return Ok(d) };
    // A device that rolled back from this release is not offered it again.
    if ask.result == Some(CheckInResult::RolledBack) && ask.attempted == Some(t.version.as_str()) {
        return Ok(d);
    }
    let downgrade = downgrade_for(&t);
    d.offer = match current {
        Some(c) if c.id == t.id => None,
        Some(c) if t.created >= c.created => Some((t, downgrade)),
        // Older than what the device runs: only with the operator's signed statement.
        Some(_) => downgrade.map(|o| (t, Some(o))),
        None if ask.current == Some(t.version.as_str()) => None,
        None => Some((t, downgrade)),
    };
    Ok(d)
}

impl Fleet {
    /// Starts the check-in writer on the current tokio runtime. Times come from `db`'s clock.
    pub fn start(
        db: Db,
        cache: CacheSettings,
        poll: PollSettings,
        metrics: Arc<Metrics>,
        answers: Arc<crate::answers::Signer>,
    ) -> Arc<Fleet> {
        let ttl_ms = i64::try_from(cache.ttl.as_millis()).unwrap_or(i64::MAX);
        Arc::new(Fleet {
            clock: db.clock().clone(),
            db: db.clone(),
            poll,
            products: Bounded::new(cache.capacity, ttl_ms),
            channels: Bounded::new(cache.capacity, ttl_ms),
            plan_sizes: Bounded::new(cache.capacity, ttl_ms),
            answers_made: Bounded::new(cache.capacity, ANSWER_MS),
            checkins: crate::checkins::Queue::start(db.clone(), metrics.clone()),
            metrics: metrics.clone(),
            answers,
        })
    }

    /// Entries held by the caches (products, channels, plan sizes).
    pub fn cache_entries(&self) -> u64 {
        (self.products.len()
            + self.channels.len()
            + self.plan_sizes.len()
            + self.answers_made.len()) as u64
    }

    /// The fleet's clock: what check-ins, rollout steps and retention are measured by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Seconds since the Unix epoch, by the fleet's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A product with its releases, or `None` if it does not exist.
    pub async fn product(&self, name: &Name) -> Result<Option<Arc<ProductView>>> {
        if let Lookup::Hit(v) = self.products.lookup(name.as_str(), self.clock.now_ms()) {
            return Ok(Some(v));
        }
        let view = match self.db.product(name).await? {
            None => None,
            Some((id, pubkey)) => {
                let mut by_version = HashMap::new();
                let mut by_id = HashMap::new();
                for r in self.db.releases(name).await? {
                    let r = Arc::new(r);
                    by_version.insert(r.version.clone(), r.clone());
                    by_id.insert(r.id, r);
                }
                let delegation = self.db.delegation(id).await?;
                let b64 = base64::engine::general_purpose::STANDARD;
                let rotations = self
                    .db
                    .rotations(id)
                    .await?
                    .into_iter()
                    .map(|(statement, signature, _)| DelegationOffer {
                        statement: b64.encode(statement),
                        signature: b64.encode(signature),
                    })
                    .collect();
                Some(Arc::new(ProductView {
                    id,
                    name: name.clone(),
                    key: pubkey,
                    delegation: self.answers.usable(delegation),
                    rotations,
                    by_version,
                    by_id,
                }))
            }
        };
        if let Some(v) = &view {
            let key = name.to_string();
            self.products.insert(key, v.clone(), self.clock.now_ms());
        }
        Ok(view)
    }

    /// A channel's state, or `None` if the channel was never set.
    pub async fn channel(&self, product_id: i64, name: &str) -> Result<Option<Arc<ChannelView>>> {
        let key = (product_id, name.to_string());
        if let Lookup::Hit(v) = self.channels.lookup(&key, self.clock.now_ms()) {
            return Ok(Some(v));
        }
        let view = match self.db.channel_state(product_id, name).await? {
            None => None,
            Some(row) => {
                let downgrade = match &row.downgrade {
                    Some((statement, sig)) => {
                        let s = Downgrade::decode(statement).map_err(|e| {
                            Error::Corrupt(format!("downgrade statement of channel {name}: {e}"))
                        })?;
                        let b64 = base64::engine::general_purpose::STANDARD;
                        Some((
                            s.version,
                            DowngradeOffer {
                                statement: b64.encode(statement),
                                signature: b64.encode(sig),
                            },
                        ))
                    }
                    None => None,
                };
                Some(Arc::new(ChannelView { row, downgrade }))
            }
        };
        if let Some(v) = &view {
            self.channels.insert(key, v.clone(), self.clock.now_ms());
        }
        Ok(view)
    }

    /// Forgets what this replica cached about a product, after an operator changed it.
    pub fn invalidate(&self, product: &str, product_id: Option<i64>) {
        self.products.remove(product);
        if let Some(id) = product_id {
            self.channels.remove_if(|(p, _)| *p == id);
        }
    }

    /// A plan's download size, cached like channel state (a plan changes when the server
    /// has built deltas for its pair, possibly on another replica).
    pub fn plan_size(&self, from: Option<i64>, to: i64) -> Option<u64> {
        self.plan_sizes
            .get(&(from.unwrap_or(0), to), self.clock.now_ms())
    }

    pub fn set_plan_size(&self, from: Option<i64>, to: i64, bytes: u64) {
        self.plan_sizes
            .insert((from.unwrap_or(0), to), bytes, self.clock.now_ms());
    }

    /// Queues a check-in; never waits. A full queue drops it (counted in `/metrics`).
    pub fn record(&self, r: crate::checkins::Report) {
        self.checkins.record(r);
    }

    /// Waits until every check-in queued before this call is written (or refused).
    pub async fn flush(&self) {
        self.checkins.flush().await;
    }

    /// Forgets devices whose last check-in is older than `keep` by the fleet's clock (their
    /// rows would otherwise stay for ever: any id a client invents is recorded); how many.
    pub async fn prune_devices(&self, keep: Duration) -> Result<u64> {
        let keep = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        let n = self
            .db
            .prune_devices(self.now().saturating_sub(keep))
            .await?;
        self.metrics.devices_pruned.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(
                devices = n,
                "forgot devices not seen within the retention period"
            );
        }
        Ok(n)
    }

    /// A time-based poll interval around the configured one: one of [`JITTER_STEPS`]
    /// evenly spread values, so that answers stay few enough to be signed once a second
    /// each (see [`Fleet::answer`]).
    pub fn next_check_secs(&self) -> u64 {
        let spread = self.poll.jitter.clamp(0.0, 1.0);
        let step = (unit_random() * JITTER_STEPS as f64).floor() + 0.5;
        let f = 1.0 - spread + 2.0 * spread * step / JITTER_STEPS as f64;
        ((self.poll.secs as f64) * f).round().max(1.0) as u64
    }

    /// The answer to a check, as bytes: made by `make` (which signs it) the first time
    /// `key` is asked for, then shared by every check with that key within the same second
    /// (the answer's issue time). An entry keeps the product and channel state it was made
    /// from, so a key naming them by address can never match newer state.
    pub fn answer(
        &self,
        key: CheckKey,
        product: &Arc<ProductView>,
        channel: Option<&Arc<ChannelView>>,
        make: impl FnOnce() -> Result<Bytes>,
    ) -> Result<Bytes> {
        let now_ms = self.clock.now_ms();
        if let Some(a) = self.answers_made.get(&key, now_ms) {
            return Ok(a.body.clone());
        }
        let body = make()?;
        let entry = MadeAnswer {
            _product: product.clone(),
            _channel: channel.cloned(),
            body: body.clone(),
        };
        self.answers_made.insert(key, Arc::new(entry), now_ms);
        Ok(body)
    }

    /// Stops every watched rollout whose failure rate is over its limit; returns the ids
    /// this call stopped.
    pub async fn watch_rollouts(&self) -> Result<Vec<i64>> {
        let mut stopped = Vec::new();
        for (product_id, product, channel, ro, version) in self.db.watched_rollouts().await? {
            let Some(max) = ro.max_failure_rate else {
                continue;
            };
            let (reports, failures) = self
                .db
                .reports(product_id, &version, ro.created_at, ro.signed_reports_only)
                .await?;
            if reports == 0 || reports < ro.min_reports as u64 {
                continue;
            }
            let rate = failures as f64 / reports as f64;
            if rate > max {
                let reason = format!(
                    "{failures} of {reports} devices failed or rolled back {version} ({:.1} % > {:.1} %)",
                    rate * 100.0,
                    max * 100.0
                );
                let detail = serde_json::json!({
                    "version": version, "reports": reports, "failures": failures,
                    "max_failure_rate": max, "reason": reason,
                });
                if self
                    .db
                    .stop_rollout(ro.id, &product, &channel, &reason, detail)
                    .await?
                {
                    tracing::warn!(product, channel, version, reason, "rollout stopped");
                    self.metrics
                        .rollouts_stopped
                        .fetch_add(1, Ordering::Relaxed);
                    stopped.push(ro.id);
                }
                self.invalidate(&product, Some(product_id));
            }
        }
        Ok(stopped)
    }
}

/// A number in [0, 1) from a per-thread xorshift generator seeded by the OS.
fn unit_random() -> f64 {
    use std::cell::Cell as StdCell;
    thread_local! {
        static STATE: StdCell<u64> = StdCell::new({
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("the OS has randomness");
            u64::from_le_bytes(b) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Rollout;

    fn rel(id: i64, v: &str, created: i64) -> Arc<ReleaseRow> {
        Arc::new(ReleaseRow {
            id,
            version: v.parse().unwrap(),
            created,
            image_bytes: 0,
            entries: 0,
            published_at: 0,
            published_by: "t".into(),
            skip_methods: Vec::new(),
        })
    }

    fn product() -> ProductView {
        let rs = [rel(1, "1", 100), rel(2, "2", 200), rel(3, "3", 300)];
        ProductView {
            id: 1,
            name: "p".parse().unwrap(),
            key: String::new(),
            delegation: None,
            rotations: Vec::new(),
            by_version: rs.iter().map(|r| (r.version.clone(), r.clone())).collect(),
            by_id: rs.iter().map(|r| (r.id, r.clone())).collect(),
        }
    }

    fn channel(release: i64, rollout: Option<Rollout>) -> ChannelView {
        ChannelView {
            row: ChannelRow {
                release_id: release,
                paused: false,
                downgrade: None,
                rollout,
                updated_at: 0,
                serial: 0,
            },
            downgrade: None,
        }
    }

    fn wave(percent: f64, floor: Option<i64>, state: RolloutState) -> Rollout {
        Rollout {
            id: 9,
            release_id: 3,
            previous_release_id: Some(2),
            floor_release_id: floor,
            start_percent: percent,
            step_percent: 0.0,
            step_secs: 0,
            max_failure_rate: None,
            min_reports: 1,
            started_at: 0,
            created_at: 0,
            state,
            reason: None,
            max_bytes_per_hour: None,
            signed_reports_only: false,
        }
    }

    fn offered(ch: &ChannelView, ask: Ask<'_>) -> Option<String> {
        decide(&product(), "stable", Some(ch), &ask, 1000)
            .unwrap()
            .offer
            .map(|(r, _)| r.version.to_string())
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("p", "c", "dev-1"), bucket("p", "c", "dev-1"));
        let n = (0..10_000)
            .filter(|i| selected("p", "c", Some(&format!("dev-{i}")), 25.0))
            .count();
        assert!((2300..2700).contains(&n), "{n}");
        assert!(!selected("p", "c", None, 99.0));
        assert!(selected("p", "c", None, 100.0));
    }

    #[test]
    fn newer_offered_older_never_without_a_statement() {
        let ch = channel(2, None);
        let ask = |c| Ask {
            current: c,
            ..Ask::default()
        };
        assert_eq!(offered(&ch, ask(Some("1"))).as_deref(), Some("2"));
        assert_eq!(offered(&ch, ask(Some("2"))), None);
        assert_eq!(offered(&ch, ask(Some("3"))), None);
        assert_eq!(offered(&ch, ask(None)).as_deref(), Some("2"));
        assert_eq!(offered(&ch, ask(Some("unknown"))).as_deref(), Some("2"));
        let mut paused = channel(2, None);
        paused.row.paused = true;
        assert_eq!(offered(&paused, ask(Some("1"))), None);
        let mut down = channel(2, None);
        down.downgrade = Some((
            "2".into(),
            DowngradeOffer {
                statement: "s".into(),
                signature: "g".into(),
            },
        ));
        let d = decide(&product(), "stable", Some(&down), &ask(Some("3")), 0).unwrap();
        let (r, st) = d.offer.unwrap();
        assert_eq!((r.version.as_str(), st.is_some()), ("2", true));
    }

    #[test]
    fn waves_floors_stops_and_pins() {
        let outside = (0..1000)
            .map(|i| format!("d{i}"))
            .find(|d| bucket("p", "stable", d) >= 50.0)
            .unwrap();
        let inside = (0..1000)
            .map(|i| format!("d{i}"))
            .find(|d| bucket("p", "stable", d) < 50.0)
            .unwrap();
        let ch = channel(3, Some(wave(50.0, None, RolloutState::Active)));
        fn ask<'a>(d: &'a str, c: Option<&'a str>) -> Ask<'a> {
            Ask {
                current: c,
                device: Some(d),
                ..Ask::default()
            }
        }
        let inside_ask = ask(&inside, Some("2"));
        assert_eq!(offered(&ch, inside_ask).as_deref(), Some("3"));
        assert_eq!(offered(&ch, ask(&outside, Some("2"))), None);
        assert_eq!(offered(&ch, ask(&outside, Some("1"))).as_deref(), Some("2"));
        let stopped = channel(3, Some(wave(50.0, None, RolloutState::Stopped)));
        assert_eq!(offered(&stopped, ask(&inside, Some("2"))), None);
        assert_eq!(offered(&stopped, ask(&inside, Some("3"))), None);
        let floored = channel(3, Some(wave(100.0, Some(2), RolloutState::Active)));
        assert_eq!(
            offered(&floored, ask(&inside, Some("1"))).as_deref(),
            Some("2")
        );
        assert_eq!(
            offered(&floored, ask(&inside, Some("2"))).as_deref(),
            Some("3")
        );
        assert_eq!(offered(&floored, ask(&inside, None)).as_deref(), Some("3"));
        let pinned = Ask {
            current: Some("3"),
            pin: Some("1"),
            ..Ask::default()
        };
        assert_eq!(offered(&ch, pinned).as_deref(), Some("1"));
        let rolled_back = Ask {
            current: Some("2"),
            device: Some(&inside),
            result: Some(CheckInResult::RolledBack),
            attempted: Some("3"),
            ..Ask::default()
        };
        assert_eq!(offered(&ch, rolled_back), None);
    }
}
