//! Release signing keys: `deltaroot keygen`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use deltaroot_format::SecretKey;

use crate::error::{Error, Result};

/// Writes `NAME.key` (mode 0600, refusing to overwrite) and `NAME.pub`; returns both paths.
pub fn keygen(name: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::Usage(format!("no randomness: {e}")))?;
    let key = SecretKey::from_seed(seed);
    let with = |ext: &str| {
        let mut s = name.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let (key_path, pub_path) = (with(".key"), with(".pub"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(Error::io(&key_path))?;
    f.write_all(key.to_text().as_bytes())
        .map_err(Error::io(&key_path))?;
    f.sync_all().map_err(Error::io(&key_path))?;
    std::fs::write(&pub_path, key.public().to_text()).map_err(Error::io(&pub_path))?;
    Ok((key_path, pub_path))
}

/// Reads a secret key file.
pub fn load(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    SecretKey::from_text(&text).map_err(|e| Error::Input {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

/// Reads a public key file.
pub fn load_public(path: &Path) -> Result<deltaroot_format::PublicKey> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    deltaroot_format::PublicKey::from_text(&text).map_err(|e| Error::Input {
        path: path.to_owned(),
        what: e.to_string(),
    })
}
