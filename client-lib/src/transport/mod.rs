//! Where a device updates from: the [`Transport`] trait, and its two implementations.
//!
//! - [`Http`] (feature `http`, on by default): a deltaroot server's `/v1/` API for checks,
//!   manifests and plans; objects, deltas and packs from the server or a static mirror.
//! - [`Folder`]: a static release folder as `deltaroot publish --out DIR` writes it, on a USB
//!   stick or a mounted share; no network, no server.
//!
//! Everything a transport hands over is checked by the device: manifests by signature,
//! contents by hash, every answer bounded by the size the plan or the format allows.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltaroot_format::api::CheckResponse;
use deltaroot_format::{DeviceId, Manifest, Name, Plan};

use crate::error::{Error, Result};

mod folder;
#[cfg(feature = "http")]
mod http;
mod layout;

pub use folder::Folder;
#[cfg(feature = "http")]
pub use http::Http;

/// Longest answer to a check.
pub const MAX_CHECK_BYTES: u64 = 1 << 20;
/// Longest plan (JSON).
pub const MAX_PLAN_BYTES: u64 = 256 << 20;
/// A signature is 64 bytes.
pub const SIGNATURE_BYTES: u64 = 64;

/// Where the time comes from: [`Instant::now`] but in tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The system's monotonic clock.
pub fn system_clock() -> Clock {
    Arc::new(Instant::now)
}

/// The time of day, in seconds since the Unix epoch: what signed answers' expiry is
/// measured against ([`system_wall`] but in tests).
pub type Wall = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's time of day.
pub fn system_wall() -> Wall {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// How a thread waits: [`std::thread::sleep`] but in tests, which move their clock instead.
pub type Sleep = Arc<dyn Fn(Duration) + Send + Sync>;

/// The system's sleep.
pub fn system_sleep() -> Sleep {
    Arc::new(std::thread::sleep)
}

/// A bandwidth limit (`max_rate`, bytes per second) shared by every download of one update:
/// after each chunk a download waits until the bytes of all of them so far are within the
/// rate since the first one began.
pub struct Rate {
    bytes_per_sec: u64,
    /// When the first chunk came, and the bytes since.
    state: Mutex<Option<(Instant, u64)>>,
    sleep: Sleep,
}

impl Rate {
    pub fn new(bytes_per_sec: u64, sleep: Sleep) -> Rate {
        Rate {
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new(None),
            sleep,
        }
    }

    /// Counts `n` bytes just received at `now`, and waits as long as the limit asks.
    fn pace(&self, n: u64, now: Instant) {
        let due = {
            let mut st = self.state.lock().expect("not poisoned");
            let (start, sent) = st.get_or_insert((now, 0));
            *sent += n;
            *start + Duration::from_secs_f64(*sent as f64 / self.bytes_per_sec as f64)
        };
        if due > now {
            (self.sleep)(due - now);
        }
    }
}

/// The time one update may take (`update_deadline_secs`): a body dribbled a byte at a time
/// does not keep the device busy for longer. Checked between the chunks a transport reads.
#[derive(Clone)]
pub struct Deadline {
    end: Instant,
    secs: u64,
    clock: Clock,
    /// The update's bandwidth limit, if it has one (paced between the same chunks).
    rate: Option<Arc<Rate>>,
}

impl Deadline {
    /// A deadline `secs` seconds from now on `clock`.
    pub fn new(secs: u64, clock: Clock) -> Deadline {
        let now = clock();
        Deadline {
            end: now
                .checked_add(Duration::from_secs(secs))
                .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400)),
            secs,
            clock,
            rate: None,
        }
    }

    /// The same deadline, with every download of the update held to `rate`.
    pub fn with_rate(mut self, rate: Option<Rate>) -> Deadline {
        self.rate = rate.map(Arc::new);
        self
    }

    /// Waits, if the update has a bandwidth limit, until `n` more bytes are within it.
    pub fn pace(&self, n: u64) {
        if let Some(r) = &self.rate {
            r.pace(n, (self.clock)());
        }
    }

    /// [`Error::Deadline`] naming `url` once the deadline has passed.
    pub fn check(&self, url: &str) -> Result<()> {
        if (self.clock)() >= self.end {
            return Err(Error::Deadline {
                url: url.to_string(),
                secs: self.secs,
            });
        }
        Ok(())
    }
}

/// The deadline a transport holds for the update under way (see
/// [`Transport::set_deadline`]).
#[derive(Default)]
pub(crate) struct DeadlineSlot(Mutex<Option<Deadline>>);

impl DeadlineSlot {
    pub fn set(&self, d: Option<Deadline>) {
        *self.0.lock().expect("not poisoned") = d;
    }
    pub fn get(&self) -> Option<Deadline> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// What a device tells its source when it asks for an update.
#[derive(Clone, Copy, Debug)]
pub struct CheckQuery<'a> {
    pub product: &'a Name,
    pub channel: &'a Name,
    /// The running version.
    pub current: Option<&'a Name>,
    pub device: &'a DeviceId,
    /// The last attempt: its result (one of `api::RESULTS`) and version.
    pub last: Option<(&'a str, &'a Name)>,
    /// The version the device is pinned to, if any.
    pub pin: Option<&'a Name>,
    /// An enrolled device's signature of this check-in (`format::checkin`): the time it
    /// signed, and the signature in hex.
    pub signed: Option<(u64, &'a str)>,
}

/// What a device needs from where it updates.
pub trait Transport: Send + Sync {
    /// Where it fetches from (a URL, a folder), for messages.
    fn location(&self) -> String;

    /// Whether the channel (or the pin) offers this device something else than it runs.
    fn check(&self, q: &CheckQuery<'_>) -> Result<CheckResponse>;

    /// Whether its answers to checks must be signed (a server: yes; a release folder,
    /// which no online key stands behind, no). The agent refuses an unsigned, expired or
    /// older answer from a transport that says yes.
    fn signs_answers(&self) -> bool {
        false
    }

    /// From now on, take a plan only when signed by a key one of `trusted` delegated to (a
    /// server's answer key) or, from a release folder, by one of `trusted` itself. This
    /// default, for transports of an embedder's own, checks nothing: their plans are held to
    /// the signed manifest's bounds alone, as every plan is.
    fn trust_plans(&self, _trusted: Vec<deltaroot_format::PublicKey>) {}

    /// Enrolls the device's public key (`.pub` text) with the server, with a token of the
    /// enroll scope. A release folder has no one to enroll with.
    fn enroll(
        &self,
        product: &Name,
        device: &DeviceId,
        public_key: &str,
        token: &str,
    ) -> Result<String> {
        let _ = (product, device, public_key, token);
        Err(Error::Config {
            path: std::path::PathBuf::from(self.location()),
            what: "a release folder takes no enrollment: enroll with a server".into(),
        })
    }

    /// A small document at `rel` (a manifest, a signature), refused past `limit` bytes.
    fn get(&self, rel: &str, limit: u64) -> Result<Vec<u8>>;

    /// A release's manifest bytes (at most `MAX_MANIFEST_BYTES`) and signature (64 bytes),
    /// unverified.
    fn manifest(&self, product: &Name, version: &Name) -> Result<(Vec<u8>, Vec<u8>)> {
        manifest_and_signature(self, product, version, "")
    }

    /// [`Transport::manifest`] for a device that runs release `running` and holds its
    /// verified manifest: a server may answer with a manifest delta from that manifest
    /// (FORMAT.md §3.8), which the caller applies
    /// ([`deltaroot_format::manifest_delta::apply`]) before verifying. The default fetches
    /// the manifest whole.
    fn manifest_since(
        &self,
        product: &Name,
        version: &Name,
        running: &Name,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let _ = running;
        self.manifest(product, version)
    }

    /// The download plan from `from` (or from nothing) to `to`.
    fn plan(&self, product: &Name, from: Option<&Name>, to: &Name) -> Result<Plan>;

    /// The download plan from `from` (the running release and its verified manifest, or
    /// nothing) to the release of the verified manifest `to`. A server is asked for the
    /// binary plan (FORMAT.md §7.2), which names contents by their place in these
    /// manifests; the default asks [`Transport::plan`].
    fn plan_between(
        &self,
        product: &Name,
        from: Option<(&Name, &Manifest)>,
        to: (&Name, &Manifest),
    ) -> Result<Plan> {
        self.plan(product, from.map(|f| f.0), to.0)
    }

    /// Downloads `rel` (an `objects/…`, `deltas/…` or `packs/…` path) into `file` (at
    /// `path`, which errors name), resuming after the bytes it holds (or starting again when
    /// they cannot be resumed), and returns its length. More than `max` bytes is an error, and so is another length than `exact`;
    /// either way `file` is emptied. A file that is not there is [`Error::Missing`] or an
    /// HTTP 404/410, which [`Error::is_unusable_delta`] counts as unusable.
    fn download(
        &self,
        rel: &str,
        file: &mut File,
        path: &Path,
        exact: Option<u64>,
        max: u64,
    ) -> Result<u64>;

    /// Bytes received so far by [`Transport::download`], for reports.
    fn downloaded(&self) -> u64;

    /// The deadline of the update under way (`None`: none), which every read of a download
    /// checks between chunks. A transport of the embedder's that ignores it (the default)
    /// is held to it only between downloads.
    fn set_deadline(&self, _deadline: Option<Deadline>) {}
}

/// A release's manifest (asked for with `query`, e.g. `?from=V`) and its signature, each
/// bounded, through `t`'s [`Transport::get`].
pub(crate) fn manifest_and_signature<T: Transport + ?Sized>(
    t: &T,
    product: &Name,
    version: &Name,
    query: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let base = format!("v1/products/{product}/releases/{version}");
    let limit = deltaroot_format::sign::MAX_MANIFEST_BYTES as u64;
    let manifest = t.get(&format!("{base}/manifest{query}"), limit)?;
    let sig = t.get(&format!("{base}/manifest.sig"), SIGNATURE_BYTES)?;
    Ok((manifest, sig))
}

/// Where a download goes: the open file, and its path for errors.
pub(crate) struct Sink<'a> {
    pub file: &'a mut File,
    pub path: &'a Path,
    /// The deadline of the update the download is part of, checked between chunks.
    pub deadline: Option<&'a Deadline>,
}

/// Copies at most `max - have` more bytes of `from` (read from `location`) to `to` after its
/// first `have` bytes, counting them into `count`; returns the new length, or `TooLarge`
/// (with the file emptied) past `max`, or [`Error::Deadline`] (the bytes so far kept for a
/// resume) once `deadline` has passed, checked before every read. A read error is `read_error(error, bytes so far)`; a
/// write error an [`Error::Io`] naming the file (final: a full disk is reported as such).
/// Shared by the transports.
pub(crate) fn copy_bounded(
    mut from: impl Read,
    to: Sink<'_>,
    have: u64,
    max: u64,
    location: &str,
    count: &std::sync::atomic::AtomicU64,
    read_error: impl Fn(std::io::Error, u64) -> Error,
) -> Result<u64> {
    let sink = || location.to_string();
    to.file.set_len(have).map_err(Error::io(to.path))?;
    to.file
        .seek(SeekFrom::Start(have))
        .map_err(Error::io(to.path))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = have;
    loop {
        if let Some(d) = to.deadline {
            d.check(location)?;
        }
        let n = from.read(&mut buf).map_err(|e| read_error(e, len))?;
        if n == 0 {
            return Ok(len);
        }
        len += n as u64;
        if len > max {
            let _ = to.file.set_len(0);
            return Err(Error::TooLarge {
                url: sink(),
                limit: max,
            });
        }
        to.file.write_all(&buf[..n]).map_err(Error::io(to.path))?;
        count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(d) = to.deadline {
            d.pace(n as u64);
        }
    }
}

/// Checks a download's length against what was promised; empties `file` if it is wrong.
pub(crate) fn check_exact(
    file: &File,
    location: &str,
    len: u64,
    exact: Option<u64>,
) -> Result<u64> {
    match exact {
        Some(want) if len != want => {
            let _ = file.set_len(0);
            Err(Error::Truncated {
                url: location.to_string(),
                got: len,
                want,
            })
        }
        _ => Ok(len),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{copy_bounded, Deadline, Sink};
    use crate::error::Error;

    /// A body that never ends, one byte per read.
    struct Dribble;

    impl std::io::Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf[0] = 7;
            Ok(1)
        }
    }

    /// A byte every 2 s (the clock moves 2 s per read of it) is stopped at the deadline, at
    /// 400 bytes for 800 s, with the bytes so far kept for a resume.
    #[test]
    fn a_dribbled_body_is_stopped_at_the_deadline() {
        let start = Instant::now();
        let reads = Arc::new(AtomicU64::new(0));
        let r = reads.clone();
        let clock =
            Arc::new(move || start + Duration::from_secs(2 * r.fetch_add(1, Ordering::Relaxed)));
        let deadline = Deadline::new(800, clock);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dl");
        let mut file = std::fs::File::create(&path).unwrap();
        let count = AtomicU64::new(0);
        let err = copy_bounded(
            Dribble,
            Sink {
                file: &mut file,
                path: &path,
                deadline: Some(&deadline),
            },
            0,
            1 << 40,
            "http://server/objects/ab/cd",
            &count,
            |e, _| Error::io("dribble")(e),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Deadline { secs: 800, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("http://server/objects/ab/cd"), "{msg}");
        assert!(msg.contains("deadline of 800 s"), "{msg}");
        assert_eq!(count.load(Ordering::Relaxed), 399);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 399);
    }

    /// 1 MiB in two downloads at 100 kB/s: they wait 10.49 s in all (a clock that only
    /// the waits move), the second download paced by the bytes of the first too; without a
    /// limit nothing waits.
    #[test]
    fn downloads_of_an_update_share_its_bandwidth_limit() {
        let start = Instant::now();
        let waited = Arc::new(AtomicU64::new(0));
        let w = waited.clone();
        let clock = Arc::new(move || start + Duration::from_micros(w.load(Ordering::Relaxed)));
        let w = waited.clone();
        let sleep = Arc::new(move |d: Duration| {
            w.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        });
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dl");
        let run = |deadline: &Deadline| {
            for _ in 0..2 {
                let mut file = std::fs::File::create(&path).unwrap();
                let body = std::io::Cursor::new(vec![5u8; 512 << 10]);
                let len = copy_bounded(
                    body,
                    Sink {
                        file: &mut file,
                        path: &path,
                        deadline: Some(deadline),
                    },
                    0,
                    1 << 20,
                    "http://server/objects/ab/cd",
                    &AtomicU64::new(0),
                    |e, _| Error::io("body")(e),
                )
                .unwrap();
                assert_eq!(len, 512 << 10);
            }
        };
        let limited = Deadline::new(3600, clock.clone())
            .with_rate(Some(super::Rate::new(100_000, sleep.clone())));
        run(&limited);
        let secs = waited.load(Ordering::Relaxed) as f64 / 1e6;
        assert!((secs - 10.48576).abs() < 0.01, "{secs}");
        waited.store(0, Ordering::Relaxed);
        run(&Deadline::new(3600, clock));
        assert_eq!(waited.load(Ordering::Relaxed), 0);
    }
}
