//! The commands of `deltaroot-agent`: settings, and install / check / update / status /
//! rollback over a [`Device`] and an [`Http`] source.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::{DeployReport, Device, Status};
use crate::error::{Error, Result};
use crate::format::api::CheckResponse;
use crate::format::{check_name, PublicKey, VerifiedManifest};
use crate::transport::Http;

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
        take!(root, server, objects_url, product, channel);
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
}

/// What `update` did.
#[derive(Debug, Serialize)]
pub enum UpdateOutcome {
    UpToDate { version: Option<String> },
    Updated(DeployReport),
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
        Ok(Agent {
            device: Device::open(&root)?,
            http: Http::new(&server, s.objects_url.as_deref())?,
            product,
            channel,
            trusted,
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

    /// Asks the server what the channel offers this device.
    pub fn check(&self) -> Result<CheckResponse> {
        let current = self.device.current()?;
        self.http
            .check(&self.product, &self.channel, current.as_deref())
    }

    /// Moves to what the channel offers, if it is newer than what runs.
    pub fn update(&self) -> Result<UpdateOutcome> {
        let _lock = self.device.lock()?;
        let current = self.device.current()?;
        let answer = self
            .http
            .check(&self.product, &self.channel, current.as_deref())?;
        let Some(offer) = answer.update else {
            return Ok(UpdateOutcome::UpToDate { version: current });
        };
        let result = self.fetch_manifest(&offer.version).and_then(|m| {
            if let Some(cur) = &current {
                let running = self.device.manifest(cur, &self.trusted)?;
                if m.manifest().created < running.manifest().created {
                    return Err(Error::Device {
                        root: self.device.root().to_owned(),
                        what: format!(
                            "refusing {}: it is older than the running {cur}; install it by name to downgrade",
                            offer.version
                        ),
                    });
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

    pub fn rollback(&self) -> Result<String> {
        let _lock = self.device.lock()?;
        self.device.rollback()
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
