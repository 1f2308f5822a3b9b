//! What the device remembers of the signed answers it took (`state/answers.json`): the
//! newest delegation and each channel's newest state, so that a replayed older answer is
//! refused (`deltaroot_format::answer`); and the release keys it learned from rotations and
//! those they revoked (`state/keys.json`, `deltaroot_format::rotation`).

use std::io;

use std::os::unix::fs::PermissionsExt;

use deltaroot_format::{fsio, Freshness, Keyring, SecretKey};

use super::Device;
use crate::error::Result;

const ANSWERS: &str = "state/answers.json";
const KEYS: &str = "state/keys.json";
/// The device's own key (`deltaroot-agent enroll`), mode 0600: it signs check-ins.
pub const DEVICE_KEY: &str = "state/device.key";

impl Device {
    /// The newest answers taken. A file that cannot be parsed is logged and counts as none
    /// (the device then takes any valid answer, as a new one would).
    pub fn answers_seen(&self) -> Result<Freshness> {
        match self.dir.read(ANSWERS) {
            Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %self.root.join(ANSWERS).display(), error = %e, "unreadable record of answers: starting afresh");
                Freshness::default()
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Freshness::default()),
            Err(e) => Err(self.io(ANSWERS)(e)),
        }
    }

    /// Records the newest answers taken, when they changed.
    pub fn remember_answers(&self, seen: &Freshness) -> Result<()> {
        if self.answers_seen()? == *seen {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(seen).expect("answers serialise");
        self.write_atomic(ANSWERS, &json)
    }

    /// The keys learned from rotations. Unlike the answers, a file that cannot be parsed is
    /// an error: treating it as empty would trust a revoked key again.
    pub fn keyring(&self) -> Result<Keyring> {
        match self.dir.read(KEYS) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| crate::error::Error::Device {
                root: self.root.clone(),
                what: format!("{KEYS} cannot be read ({e}): restore it or remove it and trust the current key with --trust"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Keyring::default()),
            Err(e) => Err(self.io(KEYS)(e)),
        }
    }

    /// Records the keys learned.
    pub fn remember_keyring(&self, ring: &Keyring) -> Result<()> {
        let json = serde_json::to_vec_pretty(ring).expect("keys serialise");
        self.write_atomic(KEYS, &json)
    }

    /// The device's own key, if it made one (`enroll`).
    pub fn device_key(&self) -> Result<Option<SecretKey>> {
        match self.dir.read_to_string(DEVICE_KEY) {
            Ok(t) => SecretKey::from_text(&t)
                .map(Some)
                .map_err(|e| crate::error::Error::Config {
                    path: self.root.join(DEVICE_KEY),
                    what: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(DEVICE_KEY)(e)),
        }
    }

    /// The device's own key, made (from the system's randomness, written mode 0600 before a
    /// byte of it) when there is none.
    pub fn device_key_or_new(&self) -> Result<SecretKey> {
        if let Some(k) = self.device_key()? {
            return Ok(k);
        }
        self.dir.create_dir_all("state").map_err(self.io("state"))?;
        let mut seed = [0u8; 32];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .map_err(crate::error::Error::io("/dev/urandom"))?;
        }
        let key = SecretKey::from_seed(seed);
        let f = fsio::AtomicFile::create_in(&self.dir, DEVICE_KEY).map_err(self.io(DEVICE_KEY))?;
        let write = || -> io::Result<()> {
            use std::io::Write;
            f.file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.file().write_all(key.to_text().as_bytes())
        };
        write().map_err(self.io(DEVICE_KEY))?;
        f.commit().map_err(self.io(DEVICE_KEY))?;
        Ok(key)
    }
}
