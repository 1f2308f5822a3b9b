//! What the device remembers of the signed answers it took (`state/answers.json`): the
//! newest delegation and each channel's newest state, so that a replayed older answer is
//! refused (`deltaroot_format::answer`).

use std::io;

use deltaroot_format::Freshness;

use super::Device;
use crate::error::Result;

const ANSWERS: &str = "state/answers.json";

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
}
