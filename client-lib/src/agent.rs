//! The commands of `deltaroot-agent`: settings, and install / check / update / status /
//! rollback over a [`Device`] and an [`Http`] source.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::{DeployReport, Device, Status};
use crate::error::{Error, Result};
use crate::format::api::{CheckResponse, RESULTS};
use crate::format::{check_name, PublicKey, SignedDowngrade, VerifiedManifest};
use crate::transport::Http;

/// Where a device id is kept when the machine has none, under the device root.
pub const DEVICE_ID_FILE: &str = "state/device-id";
/// The machine's own id, preferred when present (systemd's `machine-id(5)`).
pub const MACHINE_ID: &str = "/etc/machine-id";

/// Agent settings, from a TOML file and/or the command line.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The device root holding deployments and `current`.
    pub root: Option<PathBuf>,
    /// Base URL of the deltaroot server.
    pub server: Option<String>,
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
}

impl Settings {
    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            what: e.to_string(),
        })
    }

    /// Fields set in `over` replace those in `self`.
    pub fn merge(mut self, over: Settings) -> Settings {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            root,
            server,
            objects_url,
            product,
            channel,
            device_id,
            pin,
            ca_cert
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
    pub http: Http,
    pub product: String,
    pub channel: String,
    pub trusted: Vec<PublicKey>,
    /// Sent with every check.
    pub device_id: String,
    pub pin: Option<String>,
}

/// What `update` did.
#[derive(Debug, Serialize)]
pub enum UpdateOutcome {
    UpToDate { version: Option<String> },
    Updated(DeployReport),
}

/// A device id: 1 to 128 of `A-Z a-z 0-9 . _ : -` (the server checks the same).
pub fn check_device_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Config {
            path: PathBuf::from("(settings)"),
            what: format!("device id {id:?} is not 1-128 of A-Z a-z 0-9 . _ : -"),
        })
    }
}

/// The device's id: `machine_id` (normally `/etc/machine-id`) if it holds one, else the id
/// kept in `<root>/state/device-id`, generated on first use from 16 random bytes.
pub fn resolve_device_id(root: &Path, machine_id: &Path) -> Result<String> {
    if let Ok(text) = std::fs::read_to_string(machine_id) {
        let id = text.trim();
        if check_device_id(id).is_ok() {
            return Ok(id.to_string());
        }
    }
    let path = root.join(DEVICE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            check_device_id(&id).map_err(|_| Error::Config {
                path: path.clone(),
                what: format!("{id:?} is not a device id"),
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
                .map_err(Error::io("/dev/urandom"))?;
            let id = hex::encode(raw);
            write_atomic(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(Error::io(&path)(e)),
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    std::io::Write::write_all(&mut f, data).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub product: String,
    pub channel: String,
    pub current: Option<String>,
    pub previous: Option<String>,
    pub last: Status,
}

impl Agent {
    pub fn new(s: Settings) -> Result<Agent> {
        let missing = |what: &str| Error::Config {
            path: PathBuf::from("(settings)"),
            what: format!("{what} is not set (flag or config file)"),
        };
        let root = s.root.ok_or_else(|| missing("root"))?;
        let server = s.server.ok_or_else(|| missing("server"))?;
        let product = s.product.ok_or_else(|| missing("product"))?;
        check_name("product", &product)?;
        let channel = s.channel.unwrap_or_else(|| "stable".into());
        check_name("channel", &channel)?;
        if s.trust.is_empty() {
            return Err(missing("trust (at least one public key file)"));
        }
        let trusted = s
            .trust
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).map_err(Error::io(p))?;
                PublicKey::from_text(&text)
            })
            .collect::<Result<Vec<_>>>()?;
        let device = Device::open(&root)?;
        let device_id = match s.device_id {
            Some(id) => {
                check_device_id(&id)?;
                id
            }
            None => resolve_device_id(&root, Path::new(MACHINE_ID))?,
        };
        if let Some(p) = &s.pin {
            check_name("pin", p)?;
        }
        Ok(Agent {
            device,
            http: Http::with_ca_cert(&server, s.objects_url.as_deref(), s.ca_cert.as_deref())?,
            product,
            channel,
            trusted,
            device_id,
            pin: s.pin,
        })
    }

    /// The query of a check: what runs, who asks, how the last attempt went, any pin.
    fn check_query(&self, current: Option<&str>) -> Result<String> {
        // Names allow `+`, which a query string would read as a space.
        let enc = |v: &str| v.replace('+', "%2B");
        let mut q = vec![format!("device={}", enc(&self.device_id))];
        if let Some(v) = current {
            q.push(format!("current={}", enc(v)));
        }
        let last = self.device.status()?;
        if let (Some(r), Some(v)) = (&last.last_result, &last.last_version) {
            if RESULTS.contains(&r.as_str()) && check_name("version", v).is_ok() {
                q.push(format!("result={r}&attempted={}", enc(v)));
            }
        }
        if let Some(p) = &self.pin {
            q.push(format!("pin={}", enc(p)));
        }
        Ok(q.join("&"))
    }

    fn ask(&self, current: Option<&str>) -> Result<CheckResponse> {
        let path = format!(
            "v1/products/{}/channels/{}/check?{}",
            self.product,
            self.channel,
            self.check_query(current)?
        );
        let bytes = self.http.get_bytes(&path, 1 << 20)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Http {
            url: path,
            reason: format!("answer is not the expected JSON: {e}"),
        })
    }

    /// Fetches and verifies a release's manifest, checking it is the one asked for.
    pub fn fetch_manifest(&self, version: &str) -> Result<VerifiedManifest> {
        check_name("version", version)?;
        let (bytes, sig) = self.http.manifest(&self.product, version)?;
        let m = VerifiedManifest::verify(bytes, sig, &self.trusted)?;
        if m.manifest().product != self.product || m.manifest().version != version {
            return Err(Error::WrongRelease {
                expected: self.product.clone(),
                expected_version: version.to_string(),
                found: m.manifest().product.clone(),
                found_version: m.manifest().version.clone(),
            });
        }
        Ok(m)
    }

    /// Installs exactly `version`, older or newer: an operator's explicit choice.
    pub fn install(&self, version: &str) -> Result<DeployReport> {
        let _lock = self.device.lock()?;
        let result = self
            .fetch_manifest(version)
            .and_then(|m| self.device.deploy(&m, &self.http, &self.trusted));
        self.device.record(version, &result)?;
        result
    }

    /// Asks the server what the channel offers this device (a check-in).
    pub fn check(&self) -> Result<CheckResponse> {
        let current = self.device.current()?;
        self.ask(current.as_deref())
    }

    /// Moves to what the channel (or the pin) offers. An older release than the running one
    /// is refused unless the device pins it or the offer carries a downgrade statement
    /// signed by a trusted key that names this product, channel and version and was issued
    /// after the running release was created.
    pub fn update(&self) -> Result<UpdateOutcome> {
        let _lock = self.device.lock()?;
        let current = self.device.current()?;
        let answer = self.ask(current.as_deref())?;
        let Some(offer) = answer.update else {
            return Ok(UpdateOutcome::UpToDate { version: current });
        };
        let result = self.fetch_manifest(&offer.version).and_then(|m| {
            if let Some(cur) = &current {
                let running = self.device.manifest(cur, &self.trusted)?;
                let running_created = running.manifest().created;
                let pinned = self.pin.as_deref() == Some(offer.version.as_str());
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
                    SignedDowngrade::from_offer(statement, &self.trusted)
                        .and_then(|s| {
                            s.allows(&self.product, &self.channel, &offer.version, running_created)
                        })
                        .map_err(|e| refuse(format!("its downgrade statement is refused: {e}")))?;
                }
            }
            self.device.deploy(&m, &self.http, &self.trusted)
        });
        self.device.record(&offer.version, &result)?;
        result.map(UpdateOutcome::Updated)
    }

    pub fn status(&self) -> Result<StatusReport> {
        Ok(StatusReport {
            product: self.product.clone(),
            channel: self.channel.clone(),
            current: self.device.current()?,
            previous: self.device.previous()?,
            last: self.device.status()?,
        })
    }

    /// Switches back to the previous version and records `rolled-back` for the version left,
    /// so the next check reports it (and the server does not offer it again).
    pub fn rollback(&self) -> Result<String> {
        let _lock = self.device.lock()?;
        let left = self.device.current()?;
        let now_running = self.device.rollback()?;
        let status = Status {
            last_result: Some("rolled-back".into()),
            last_version: left,
            last_error: None,
            updated_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&status).expect("status serialises");
        write_atomic(&self.device.root().join("state/status.json"), &json)?;
        Ok(now_running)
    }
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

/// Bytes for people: `12.3 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Show for DeployReport {
    fn text(&self) -> String {
        format!(
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
        )
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
            UpdateOutcome::UpToDate { version } => format!(
                "up to date at {}",
                version.as_deref().unwrap_or("nothing installed")
            ),
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
        s
    }
    json_via_serde!();
}
