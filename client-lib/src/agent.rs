//! The commands of `deltaroot-agent`: settings, and install / check / update / status /
//! rollback over a [`Device`] and a [`Transport`] (a server over HTTP(S), or a release
//! folder).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::{BootCheck, DeployReport, Device, MarkGood, Status, Trial};
use crate::error::{Error, Result};
use crate::transport::{
    system_clock, system_sleep, system_wall, CheckQuery, Clock, Deadline, Folder, Rate, Sleep,
    Transport, Wall,
};
use deltaroot_format::api::{CheckResponse, RESULTS};
use deltaroot_format::fsio;
use deltaroot_format::{
    human_bytes, DeviceId, Name, PublicKey, Question, SignedDowngrade, TrustedAnswer,
    VerifiedManifest,
};

/// Where a device id is kept when the machine has none, under the device root.
pub const DEVICE_ID_FILE: &str = "state/device-id";
/// The machine's own id, preferred when present (systemd's `machine-id(5)`).
pub const MACHINE_ID: &str = "/etc/machine-id";
/// How long one update may take unless `update_deadline_secs` says otherwise: 6 hours.
pub const DEFAULT_UPDATE_DEADLINE_SECS: u64 = 6 * 3600;

/// Agent settings, from a TOML file and/or the command line.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The device root holding deployments and `current`.
    pub root: Option<PathBuf>,
    /// Base URL of the deltaroot server (needs the `http` feature).
    pub server: Option<String>,
    /// A static release folder (`deltaroot publish --out DIR`: a USB stick, a mounted share,
    /// or its `http(s)://` URL on any web server) to update from instead of a server; see
    /// `transport::layout` for how it answers a check.
    pub folder: Option<PathBuf>,
    /// Base URL of objects and deltas, when a mirror or CDN serves them.
    pub objects_url: Option<String>,
    pub product: Option<String>,
    /// Channel to follow; `stable` when unset.
    pub channel: Option<String>,
    /// Public key files of trusted publishers.
    #[serde(default)]
    pub trust: Vec<PathBuf>,
    /// How the device names itself in checks (rollout waves, check-ins). Default: the
    /// machine's `/etc/machine-id`, else an id generated once into `state/device-id`.
    pub device_id: Option<String>,
    /// Follow this exact version instead of the channel (moves to it even if older: the
    /// device's own configuration says so).
    pub pin: Option<String>,
    /// PEM certificate of a private certificate authority that signed the server's
    /// certificate, for HTTPS.
    pub ca_cert: Option<PathBuf>,
    /// How long one update (install or update) may take, in seconds, before it stops with
    /// an error naming the deadline (a body dribbled a byte at a time); checked between
    /// the chunks of every download. Default [`DEFAULT_UPDATE_DEADLINE_SECS`].
    pub update_deadline_secs: Option<u64>,
    /// Most bytes per second all downloads of an update take together (none: as fast as the
    /// network goes).
    pub max_rate: Option<u64>,
    /// A folder of hooks: `pre-switch.d`, `post-switch.d` and `revert.d`, each executable
    /// in them run around a switch or a revert (`deltaroot_client::health::Hooks`).
    pub hooks: Option<PathBuf>,
    /// The time each hook may take, in seconds (default [`DEFAULT_HOOK_TIMEOUT_SECS`]).
    pub hook_timeout_secs: Option<u64>,
    /// Deployments kept on the device, newest first (default 2), besides the running,
    /// previous and last good ones, which are always kept.
    pub keep_versions: Option<u32>,
    /// Where a plan offers the whole object beside a delta slow to rebuild (a compressed
    /// kernel's `xz` delta): `bytes`, `time` or `auto` (the default: whichever takes less
    /// time on the link and processor speeds this device measured).
    pub prefer: Option<crate::device::prefer::Prefer>,
}

/// How long a hook may run by default.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 300;

impl Settings {
    /// Fields set in `over` replace those in `self`.
    pub fn merge(mut self, over: Settings) -> Settings {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            root,
            server,
            folder,
            objects_url,
            product,
            channel,
            device_id,
            pin,
            ca_cert,
            update_deadline_secs,
            max_rate,
            hooks,
            hook_timeout_secs,
            keep_versions,
            prefer
        );
        if !over.trust.is_empty() {
            self.trust = over.trust;
        }
        self
    }
}

/// A configured agent.
pub struct Agent {
    pub device: Device,
    /// Where updates come from.
    pub transport: Box<dyn Transport>,
    pub product: Name,
    pub channel: Name,
    /// The release keys of `--trust`. What signs now is [`Agent::active_keys`]: these and
    /// the keys rotations introduced, less those they replaced.
    pub trusted: Vec<PublicKey>,
    /// Sent with every check.
    pub device_id: DeviceId,
    pub pin: Option<Name>,
    /// How long one update may take, in seconds (`update_deadline_secs`).
    pub update_deadline_secs: u64,
    /// The clock the deadline is measured on ([`system_clock`]; tests set their own).
    pub clock: Clock,
    /// The bandwidth limit of every update, in bytes per second (`max_rate`).
    pub max_rate: Option<u64>,
    /// How the bandwidth limit waits ([`system_sleep`]; tests set their own).
    pub sleep: Sleep,
    /// The time of day signed answers' expiry is held to ([`system_wall`]; tests set their
    /// own).
    pub wall: Wall,
}

/// Clears the transport's deadline when an update ends, however it ends.
struct DeadlineGuard<'a>(&'a dyn Transport);

impl Drop for DeadlineGuard<'_> {
    fn drop(&mut self) {
        self.0.set_deadline(None);
    }
}

/// What `enroll` did.
#[derive(Debug, Serialize)]
pub struct Enrolled {
    pub product: Name,
    pub device: String,
    pub key_id: String,
}

/// What `update` did.
#[derive(Debug, Serialize)]
pub enum UpdateOutcome {
    UpToDate {
        version: Option<String>,
    },
    Updated(DeployReport),
    /// `update --download-only`: downloaded and verified, not switched to.
    Staged(DeployReport),
}

/// A device id: 1 to 128 of `A-Z a-z 0-9 . _ : -` ([`DeviceId`]'s rule, which the server
/// checks too).
pub fn check_device_id(id: &str) -> Result<()> {
    DeviceId::new(id).map(drop).map_err(|e| Error::Config {
        path: PathBuf::from("(settings)"),
        what: e.to_string(),
    })
}

/// The device's id: `machine_id` (normally `/etc/machine-id`) if it holds one, else the id
/// kept in `<root>/state/device-id`, generated on first use from 16 random bytes. Neither
/// file's contents are ever put in an error.
pub fn resolve_device_id(root: &Path, machine_id: &Path) -> Result<DeviceId> {
    if let Ok(text) = std::fs::read_to_string(machine_id) {
        if let Ok(id) = DeviceId::new(text.trim()) {
            return Ok(id);
        }
    }
    let path = root.join(DEVICE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => DeviceId::new(text.trim()).map_err(|e| Error::Config {
            path: path.clone(),
            what: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
                .map_err(Error::io("/dev/urandom"))?;
            let id = DeviceId::new(hex::encode(raw)).expect("hex is a device id");
            fsio::write_atomic(&path, format!("{id}\n").as_bytes()).map_err(Error::io(&path))?;
            Ok(id)
        }
        Err(e) => Err(Error::io(&path)(e)),
    }
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub product: Name,
    pub channel: Name,
    pub current: Option<Name>,
    pub previous: Option<Name>,
    pub last: Status,
    /// The running version's trial, until it is marked good.
    pub trial: Option<Trial>,
}

/// Boots a version on trial gets before `boot_check` reverts it (`--boot-attempts`).
pub const DEFAULT_BOOT_ATTEMPTS: u32 = 3;

/// A setting that must hold a name.
fn name_setting(field: &'static str, value: String) -> Result<Name> {
    Name::new(field, value).map_err(|e| Error::Config {
        path: PathBuf::from("(settings)"),
        what: e.to_string(),
    })
}

impl Agent {
    /// An agent as `s` says: its device root, trusted keys, product and channel, and where
    /// it updates from (`server`, or `folder`).
    pub fn new(s: Settings) -> Result<Agent> {
        let transport: Box<dyn Transport> = match (&s.server, &s.folder) {
            (Some(_), Some(_)) => {
                return Err(settings_error(
                    "server and folder are both set: choose where updates come from",
                ))
            }
            (Some(server), None) => http_transport(server, &s)?,
            (None, Some(folder)) => match folder.to_str() {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    folder_url_transport(url, &s)?
                }
                _ => Box::new(Folder::open(folder)?),
            },
            (None, None) => {
                return Err(settings_error(
                    "server (or folder) is not set (flag or config file)",
                ))
            }
        };
        Agent::with_transport(s, transport)
    }

    /// An agent that updates through `transport`; the settings' `server`, `objects_url`,
    /// `ca_cert` and `folder` are not used.
    pub fn with_transport(s: Settings, transport: Box<dyn Transport>) -> Result<Agent> {
        let missing =
            |what: &str| settings_error(&format!("{what} is not set (flag or config file)"));
        let root = s.root.ok_or_else(|| missing("root"))?;
        let product = name_setting("product", s.product.ok_or_else(|| missing("product"))?)?;
        let channel = name_setting("channel", s.channel.unwrap_or_else(|| "stable".into()))?;
        let pin = s.pin.map(|p| name_setting("pin", p)).transpose()?;
        if s.trust.is_empty() {
            return Err(missing("trust (at least one public key file)"));
        }
        let trusted = s
            .trust
            .iter()
            .map(|p| {
                // The key text is never echoed (a secret key passed by mistake).
                let text = std::fs::read_to_string(p).map_err(Error::io(p))?;
                PublicKey::from_text(&text).map_err(|e| Error::Config {
                    path: p.clone(),
                    what: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut device = Device::open(&root)?;
        if let Some(n) = s.keep_versions {
            device.set_keep_versions(n as usize);
        }
        device.set_prefer(s.prefer.unwrap_or_default(), s.max_rate.filter(|r| *r > 0));
        device.set_hooks(s.hooks.map(|dir| crate::health::Hooks {
            dir,
            limit: std::time::Duration::from_secs(
                s.hook_timeout_secs.unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS),
            ),
        }));
        let device_id = match s.device_id {
            Some(id) => DeviceId::new(id).map_err(|e| settings_error(&e.to_string()))?,
            None => resolve_device_id(&root, Path::new(MACHINE_ID))?,
        };
        Ok(Agent {
            device,
            transport,
            product,
            channel,
            trusted,
            device_id,
            pin,
            update_deadline_secs: s
                .update_deadline_secs
                .unwrap_or(DEFAULT_UPDATE_DEADLINE_SECS),
            clock: system_clock(),
            max_rate: s.max_rate.filter(|r| *r > 0),
            sleep: system_sleep(),
            wall: system_wall(),
        })
    }

    /// Starts the deadline of one update on the transport, until the guard is dropped; plans
    /// from a server must be signed by a key the active release keys delegated to.
    fn start_deadline(&self) -> Result<DeadlineGuard<'_>> {
        self.transport.trust_plans(self.active_keys()?);
        let rate = self.max_rate.map(|r| Rate::new(r, self.sleep.clone()));
        let d = Deadline::new(self.update_deadline_secs, self.clock.clone()).with_rate(rate);
        self.transport.set_deadline(Some(d));
        Ok(DeadlineGuard(&*self.transport))
    }

    /// Asks the transport what the channel (or the pin) offers: what runs, who asks, how the
    /// last attempt went.
    fn ask(&self, current: Option<&Name>) -> Result<CheckResponse> {
        let last = self.device.status()?;
        let last_version = last
            .last_version
            .as_deref()
            .and_then(|v| Name::new("version", v).ok());
        let last = match (&last.last_result, &last_version) {
            (Some(r), Some(v)) if RESULTS.contains(&r.as_str()) => Some((r.as_str(), v)),
            _ => None,
        };
        // An enrolled device signs what it reports.
        let signature = self.device.device_key()?.map(|key| {
            let at = (self.wall)();
            let c = deltaroot_format::checkin::CheckIn {
                product: &self.product,
                channel: &self.channel,
                device: &self.device_id,
                current: current.map(|v| v.as_str()),
                result: last.map(|(r, _)| r),
                attempted: last.map(|(_, v)| v.as_str()),
                pin: self.pin.as_deref(),
                at,
            };
            (at, c.sign(&key))
        });
        let answer = self.transport.check(&CheckQuery {
            product: &self.product,
            channel: &self.channel,
            current,
            device: &self.device_id,
            last,
            pin: self.pin.as_ref(),
            signed: signature.as_ref().map(|(at, sig)| (*at, sig.as_str())),
        })?;
        if !self.transport.signs_answers() {
            return Ok(answer);
        }
        self.trust_answer(answer, current)
    }

    /// What a server's answer says, taken from its signed bytes alone: signed by a trusted
    /// key or one it delegated to, about this question, not expired, not older than the
    /// newest this device took (`state/answers.json`, updated here). The release key
    /// rotations that come with it are taken first (`state/keys.json`).
    fn trust_answer(&self, answer: CheckResponse, current: Option<&Name>) -> Result<CheckResponse> {
        let refused = |e: deltaroot_format::Error| Error::Answer {
            url: self.transport.location(),
            source: e,
        };
        let mut ring = self.device.keyring()?;
        if ring
            .learn(&self.product, &self.trusted, &answer.rotations)
            .map_err(refused)?
        {
            self.device.remember_keyring(&ring)?;
            tracing::info!(keys = ?ring.active(&self.trusted), "release key rotated");
        }
        let active = ring.active(&self.trusted);
        let mut seen = self.device.answers_seen()?;
        let downgrade = answer.update.as_ref().and_then(|u| u.downgrade.as_ref());
        let taken = TrustedAnswer::verify(answer.signed.as_ref(), &active)
            .and_then(|t| {
                t.accept(
                    &Question {
                        product: &self.product,
                        channel: &self.channel,
                        current,
                    },
                    (self.wall)(),
                    &mut seen,
                    downgrade,
                )
            })
            .map_err(refused)?;
        self.device.remember_answers(&seen)?;
        Ok(taken)
    }

    /// Makes the device's own key if it has none (`state/device.key`) and enrolls its public
    /// half with the server, with a token of the enroll scope; from then on every check-in
    /// is signed, and the server records no other for this device.
    pub fn enroll(&self, token: &str) -> Result<Enrolled> {
        let _lock = self.device.lock()?;
        let key = self.device.device_key_or_new()?;
        let public = key.public();
        self.transport
            .enroll(&self.product, &self.device_id, &public.to_text(), token)?;
        Ok(Enrolled {
            product: self.product.clone(),
            device: self.device_id.to_string(),
            key_id: public.id(),
        })
    }

    /// The release keys that sign what this device takes now: `--trust`, and the keys
    /// rotations introduced, less those they replaced.
    pub fn active_keys(&self) -> Result<Vec<PublicKey>> {
        Ok(self.device.keyring()?.active(&self.trusted))
    }

    /// Every release key this device ever trusted: what the manifests it keeps are signed
    /// with.
    fn known_keys(&self) -> Result<Vec<PublicKey>> {
        Ok(self.device.keyring()?.known(&self.trusted))
    }

    /// Fetches and verifies a release's manifest, checking it is the one asked for.
    pub fn fetch_manifest(&self, version: &str) -> Result<VerifiedManifest> {
        let version = Name::new("version", version)?;
        let (bytes, sig) = self.manifest_bytes(&version)?;
        let ring = self.device.keyring()?;
        let m = match VerifiedManifest::verify(
            bytes.clone(),
            sig.clone(),
            &ring.active(&self.trusted),
        ) {
            Ok(m) => m,
            // A release signed before a rotation replaced its key is still the product's.
            Err(e) => {
                let revoked = ring.revoked();
                let keys: Vec<PublicKey> = revoked.iter().map(|(k, _)| k.clone()).collect();
                let Ok(m) = VerifiedManifest::verify(bytes, sig, &keys) else {
                    return Err(e.into());
                };
                let (key, at) = revoked
                    .iter()
                    .find(|(k, _)| k.id() == m.key_id())
                    .expect("the key that verified is one of them");
                if m.manifest().created >= *at {
                    return Err(Error::Answer {
                        url: self.transport.location(),
                        source: deltaroot_format::Error::Refused {
                            what: format!("manifest of {version}"),
                            reason: format!(
                                "it is signed by key {}, which a rotation replaced at {at}, and created at {}, after that",
                                key.id(),
                                m.manifest().created
                            ),
                        },
                    });
                }
                m
            }
        };
        if m.manifest().product != self.product || m.manifest().version != version {
            return Err(Error::WrongRelease {
                expected: self.product.to_string(),
                expected_version: version.to_string(),
                found: m.manifest().product.clone(),
                found_version: m.manifest().version.clone(),
            });
        }
        Ok(m)
    }

    /// A release's manifest and signature, unverified. A device that runs a release asks
    /// for the manifest as a delta from its own (FORMAT.md §3.8) and rebuilds it; a delta
    /// it cannot apply costs one more request, for the manifest whole.
    fn manifest_bytes(&self, version: &Name) -> Result<(Vec<u8>, Vec<u8>)> {
        let running = match self.device.current()? {
            Some(current) if current != *version => self
                .device
                .manifest(&current, &self.known_keys()?)
                .ok()
                .map(|m| (current, m)),
            _ => None,
        };
        let Some((current, running)) = running else {
            return self.transport.manifest(&self.product, version);
        };
        let (answer, sig) = self
            .transport
            .manifest_since(&self.product, version, &current)?;
        if !deltaroot_format::manifest_delta::is_delta(&answer) {
            return Ok((answer, sig));
        }
        match deltaroot_format::manifest_delta::apply(&answer, running.bytes()) {
            Ok(bytes) => Ok((bytes, sig)),
            Err(e) => {
                tracing::warn!(%version, from = %current, error = %e, "the manifest delta does not apply: fetching the manifest whole");
                self.transport.manifest(&self.product, version)
            }
        }
    }

    /// Installs exactly `version`, older or newer: an operator's explicit choice. The
    /// running version is up to date, not a failure, and records nothing.
    pub fn install(&self, version: &str) -> Result<UpdateOutcome> {
        let _lock = self.device.lock()?;
        let current = self.device.current()?;
        if current.as_deref() == Some(version) {
            return Ok(UpdateOutcome::UpToDate {
                version: current.map(Name::into_string),
            });
        }
        let _deadline = self.start_deadline()?;
        let result = self.fetch_manifest(version).and_then(|m| {
            self.device
                .deploy(&m, &*self.transport, &self.known_keys()?)
        });
        self.record(version, result).map(UpdateOutcome::Updated)
    }

    /// Records an attempt's outcome and returns it. When the record itself cannot be written
    /// (a full disk, say), the outcome is still what is returned: a failed update reports
    /// its own error, not the status file's; a deployment that switched reports success. The
    /// write error is logged.
    fn record(&self, version: &str, result: Result<DeployReport>) -> Result<DeployReport> {
        if let Err(e) = self.device.record(version, &result) {
            tracing::warn!(version, error = %e, "could not record the outcome of the update");
            // A status that still says "ok" from before would be a lie: none is better.
            if result.is_err() {
                self.device.forget_status();
            }
        }
        result
    }

    /// Asks the source what the channel offers this device (a check-in with a server).
    pub fn check(&self) -> Result<CheckResponse> {
        let current = self.device.current()?;
        self.ask(current.as_ref())
    }

    /// Moves to what the channel (or the pin) offers. An older release than the running one
    /// is refused unless the device pins it or the offer carries a downgrade statement
    /// signed by a trusted key that names this product, channel and version and was issued
    /// after the running release was created.
    pub fn update(&self) -> Result<UpdateOutcome> {
        self.update_with(false)
    }

    /// `update --download-only`: what [`Agent::update`] would do up to its downloads, all
    /// verified into `staging/` with the signed manifest; nothing is switched, and a failure
    /// is not recorded as a failed update (no attempt was made).
    pub fn download_update(&self) -> Result<UpdateOutcome> {
        self.update_with(true)
    }

    /// `update --apply-staged`: installs what `update --download-only` staged, without the
    /// network (its manifest verified again; a content missing from the staging is an
    /// error naming it, and nothing changes).
    pub fn apply_staged(&self) -> Result<UpdateOutcome> {
        let _lock = self.device.lock()?;
        let known = self.known_keys()?;
        let Some(m) = self.device.staged(&known)? else {
            // A second run after the switch (a maintenance script run again) learns where
            // the device stands.
            let runs = match self.device.current()? {
                Some(v) => format!("the device runs {v}"),
                None => "the device runs no version".into(),
            };
            return Err(Error::Device {
                root: self.device.root().to_owned(),
                what: format!("nothing is staged ({runs}): run `update --download-only` first"),
            });
        };
        let version = m.manifest().version.clone();
        let offline = StagedOnly {
            root: self.device.root().to_owned(),
        };
        let result = self.device.deploy(&m, &offline, &known);
        self.record(&version, result).map(UpdateOutcome::Updated)
    }

    fn update_with(&self, download_only: bool) -> Result<UpdateOutcome> {
        let _lock = self.device.lock()?;
        let current = self.device.current()?;
        let answer = self.ask(current.as_ref())?;
        tracing::info!(
            channel = %answer.channel,
            latest = answer.latest.as_deref().unwrap_or("-"),
            offered = answer.update.as_ref().map_or("nothing", |u| u.version.as_str()),
            paused = answer.paused,
            paced = answer.paced,
            "checked"
        );
        let Some(offer) = answer.update else {
            return Ok(UpdateOutcome::UpToDate {
                version: current.map(Name::into_string),
            });
        };
        let _deadline = self.start_deadline()?;
        let result = self.fetch_manifest(&offer.version).and_then(|m| {
            // Without the running version's manifest there is nothing to compare with: the
            // offer is taken (logged when the manifest is read).
            let running = match &current {
                Some(cur) => self.device.running_manifest(cur, &self.known_keys()?)?,
                None => None,
            };
            if let (Some(cur), Some(running)) = (&current, running) {
                let running_created = running.manifest().created;
                let pinned = self.pin.as_ref().is_some_and(|p| *p == offer.version);
                if m.manifest().created < running_created && !pinned {
                    let refuse = |why: String| Error::Device {
                        root: self.device.root().to_owned(),
                        what: format!(
                            "refusing {}: it is older than the running {cur} and {why}; install it by name to downgrade",
                            offer.version
                        ),
                    };
                    let Some(statement) = &offer.downgrade else {
                        return Err(refuse("the server sent no signed downgrade".into()));
                    };
                    SignedDowngrade::from_offer(statement, &self.active_keys()?)
                        .and_then(|s| {
                            s.allows(&self.product, &self.channel, &offer.version, running_created)
                        })
                        .map_err(|e| refuse(format!("its downgrade statement is refused: {e}")))?;
                }
            }
            if download_only {
                self.device
                    .stage_downloads(&m, &*self.transport, &self.known_keys()?)
            } else {
                self.device.deploy(&m, &*self.transport, &self.known_keys()?)
            }
        });
        if download_only {
            return result.map(UpdateOutcome::Staged);
        }
        self.record(&offer.version, result)
            .map(UpdateOutcome::Updated)
    }

    pub fn status(&self) -> Result<StatusReport> {
        Ok(StatusReport {
            product: self.product.clone(),
            channel: self.channel.clone(),
            current: self.device.current()?,
            previous: self.device.previous()?,
            last: self.device.status()?,
            trial: self.device.trial()?,
        })
    }

    /// Confirms the running version (the end of its trial): see [`Device::mark_good`].
    pub fn mark_good(&self) -> Result<MarkGood> {
        let _lock = self.device.lock()?;
        self.device.mark_good()
    }

    /// Counts a boot of the version on trial and reverts it after `attempts` boots without
    /// [`Agent::mark_good`]: see [`Device::boot_check`]. Needs no network; the revert is
    /// reported (`rolled-back`, with the reason) at the next check.
    pub fn boot_check(&self, attempts: u32) -> Result<BootCheck> {
        let _lock = self.device.lock()?;
        self.device.boot_check(attempts)
    }

    /// Switches back to the previous version and records `rolled-back` for the version left,
    /// so the next check reports it (and the server does not offer it again).
    pub fn rollback(&self) -> Result<Name> {
        let _lock = self.device.lock()?;
        let left = self.device.current()?;
        if let Some(prev) = self.device.previous()? {
            // Unmarked (installed before the marks): marked only if it verifies whole.
            self.device.adopt_deployment(&prev, &self.known_keys()?);
        }
        let now_running = self.device.rollback()?;
        // A rollback by hand ends any trial: the operator chose the version.
        if let Err(e) = self.device.end_trial() {
            tracing::warn!(error = %e, "could not end the trial");
        }
        // Rolled back either way: a record that cannot be written does not undo that.
        if let Err(e) = self.device.record_rollback(left.as_ref()) {
            tracing::warn!(error = %e, "could not record the rollback");
            self.device.forget_status();
        }
        Ok(now_running)
    }
}

fn settings_error(what: &str) -> Error {
    Error::Config {
        path: PathBuf::from("(settings)"),
        what: what.to_string(),
    }
}

#[cfg(feature = "http")]
fn http_transport(server: &str, s: &Settings) -> Result<Box<dyn Transport>> {
    Ok(Box::new(crate::transport::Http::with_ca_cert(
        server,
        s.objects_url.as_deref(),
        s.ca_cert.as_deref(),
    )?))
}

#[cfg(feature = "http")]
fn folder_url_transport(url: &str, s: &Settings) -> Result<Box<dyn Transport>> {
    Ok(Box::new(crate::transport::Http::release_folder(
        url,
        s.ca_cert.as_deref(),
    )?))
}

#[cfg(not(feature = "http"))]
fn folder_url_transport(url: &str, _: &Settings) -> Result<Box<dyn Transport>> {
    Err(settings_error(&format!(
        "folder {url} is a URL, and this build has no HTTP client (feature http)"
    )))
}

#[cfg(not(feature = "http"))]
fn http_transport(server: &str, _: &Settings) -> Result<Box<dyn Transport>> {
    Err(settings_error(&format!(
        "server {server} is set, but this agent is built without the http feature: use a folder"
    )))
}

/// How a command's result is printed: a line or two for people, or JSON.
pub trait Show {
    fn text(&self) -> String;
    fn json(&self) -> String;
}

macro_rules! json_via_serde {
    () => {
        fn json(&self) -> String {
            serde_json::to_string_pretty(self).expect("results serialise")
        }
    };
}

impl Show for Enrolled {
    fn text(&self) -> String {
        format!(
            "enrolled device {} of {} with key {}: its check-ins are signed from now on",
            self.device, self.product, self.key_id
        )
    }
    json_via_serde!();
}

impl Show for DeployReport {
    fn text(&self) -> String {
        let mut s = format!(
            "installed {} (from {}): downloaded {} (plan {}) in {} deltas and {} objects; {} files hardlinked, {} copied, {} written",
            self.version,
            self.from.as_deref().unwrap_or("nothing"),
            human_bytes(self.downloaded_bytes),
            human_bytes(self.planned_bytes),
            self.deltas,
            self.objects,
            self.linked,
            self.copied,
            self.written
        );
        if self.repaired > 0 {
            s.push_str(&format!(
                "\n  {} files of the running tree had changed on the device: fetched whole",
                self.repaired
            ));
        }
        for h in &self.hooks {
            s.push_str(&format!("\n  {h}"));
        }
        s
    }
    json_via_serde!();
}

impl Show for CheckResponse {
    fn text(&self) -> String {
        match &self.update {
            Some(u) => format!(
                "update available: {} on {}/{}, download {} (image {})",
                u.version,
                self.product,
                self.channel,
                human_bytes(u.download_bytes),
                human_bytes(u.image_bytes)
            ),
            None if self.paused => format!(
                "no update: {}/{} is paused by its operators (it points at {})",
                self.product,
                self.channel,
                self.latest.as_deref().unwrap_or("nothing yet")
            ),
            None if self.paced => format!(
                "no update yet: the rollout on {}/{} is paced by its egress budget and this \
                 hour's is spent; asking again later",
                self.product, self.channel
            ),
            None => format!(
                "up to date: {}/{} offers {}",
                self.product,
                self.channel,
                self.latest.as_deref().unwrap_or("nothing yet")
            ),
        }
    }
    json_via_serde!();
}

impl Show for UpdateOutcome {
    fn text(&self) -> String {
        match self {
            UpdateOutcome::Updated(r) => r.text(),
            UpdateOutcome::Staged(r) => format!(
                "downloaded {} for {} and verified it; `update --apply-staged` installs it",
                human_bytes(r.downloaded_bytes),
                r.version
            ),
            UpdateOutcome::UpToDate { version: Some(v) } => {
                format!("up to date: {v} is already running")
            }
            UpdateOutcome::UpToDate { version: None } => "up to date: nothing installed".into(),
        }
    }
    json_via_serde!();
}

impl Show for StatusReport {
    fn text(&self) -> String {
        let mut s = format!(
            "product {} channel {}\ncurrent  {}\nprevious {}",
            self.product,
            self.channel,
            self.current.as_deref().unwrap_or("-"),
            self.previous.as_deref().unwrap_or("-")
        );
        if let (Some(r), Some(v)) = (&self.last.last_result, &self.last.last_version) {
            s.push_str(&format!("\nlast     {r} ({v})"));
            if let Some(e) = &self.last.last_error {
                s.push_str(&format!(": {e}"));
            }
        }
        if let Some(t) = &self.trial {
            s.push_str(&format!(
                "\ntrial    {} on trial, {} boots counted; `deltaroot-agent mark-good` confirms it",
                t.version, t.boots
            ));
        }
        s
    }
    json_via_serde!();
}

impl Show for BootCheck {
    fn text(&self) -> String {
        match self {
            BootCheck::NoTrial { current } => format!(
                "nothing on trial: {} runs",
                current.as_deref().unwrap_or("nothing")
            ),
            BootCheck::OnTrial {
                version,
                boot,
                attempts,
            } => format!("{version} on trial: boot {boot} of {attempts} before it is reverted"),
            BootCheck::Reverted {
                from,
                to,
                reason,
                hooks,
            } => {
                let mut s = format!("reverted from {from} to {to}: {reason}");
                for h in hooks {
                    s.push_str(&format!("\n  {h}"));
                }
                s
            }
            BootCheck::Kept { version, reason } => {
                format!("{reason}, and there is no version to revert to: {version} stays")
            }
        }
    }
    json_via_serde!();
}

impl Show for MarkGood {
    fn text(&self) -> String {
        match self {
            MarkGood::Marked { version } => format!("marked good: {version} stays"),
            MarkGood::NoTrial { current } => format!(
                "nothing on trial: {} runs",
                current.as_deref().unwrap_or("nothing")
            ),
        }
    }
    json_via_serde!();
}

/// The source of `update --apply-staged`: everything must be in `staging/` already; it
/// fetches nothing.
struct StagedOnly {
    root: PathBuf,
}

impl StagedOnly {
    fn not_staged(&self, what: &str) -> Error {
        Error::Device {
            root: self.root.clone(),
            what: format!("{what} was not downloaded by `update --download-only`: run it again"),
        }
    }
}

impl Transport for StagedOnly {
    fn location(&self) -> String {
        format!("{}/staging", self.root.display())
    }

    fn check(&self, _q: &CheckQuery<'_>) -> Result<CheckResponse> {
        Err(self.not_staged("an update check"))
    }

    fn get(&self, rel: &str, _limit: u64) -> Result<Vec<u8>> {
        Err(self.not_staged(rel))
    }

    /// Nothing to fetch: the contents are staged.
    fn plan(
        &self,
        product: &Name,
        from: Option<&Name>,
        to: &Name,
    ) -> Result<deltaroot_format::Plan> {
        Ok(deltaroot_format::Plan {
            product: product.to_string(),
            from: from.map(|f| f.to_string()),
            to: to.to_string(),
            items: Vec::new(),
            packs: Vec::new(),
            download_bytes: 0,
        })
    }

    fn download(
        &self,
        rel: &str,
        _file: &mut std::fs::File,
        _path: &Path,
        _exact: Option<u64>,
        _max: u64,
    ) -> Result<u64> {
        Err(self.not_staged(rel))
    }

    fn downloaded(&self) -> u64 {
        0
    }
}
