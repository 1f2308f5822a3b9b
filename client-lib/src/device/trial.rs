//! The trial of a new version: every switch by an install or an update puts the version on
//! trial (`state/trial.json`, written before `current` moves); `mark_good` ends the trial;
//! `boot_check`, run once early in each boot, counts the boots of the version on trial and
//! after `attempts` boots without `mark_good` reverts to the version before it, recording
//! `rolled-back` with the reason for the next check-in.
//!
//! ```text
//!             switch (install, update)
//!   running ─────────────────────────────▶ on trial (boots = 0)
//!      ▲                                        │ boot_check: boots + 1 ≤ attempts
//!      │ mark_good                              ▼
//!      └──────────────────────────────── on trial (boots = n)
//!                                               │ boot_check: boots + 1 > attempts
//!                                               ▼
//!                        reverted: current = the version before, status rolled-back
//! ```
//!
//! Every step is one atomic write (the status, the trial file) or one link swap, in an order
//! a power cut at any point leaves right: the status is written before the switch back, and
//! the trial removed after it, so an interrupted revert is done again by the next boot.

use serde::{Deserialize, Serialize};

use super::{now, Device, Status};
use crate::error::Result;

/// The trial of the running version, if it has not been marked good.
pub(super) const TRIAL: &str = "state/trial.json";
/// The last version marked good, which pruning keeps.
pub(super) const GOOD: &str = "state/good";

/// A version on trial.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trial {
    pub version: String,
    /// What a revert goes back to: the version running before the switch.
    pub previous: Option<String>,
    /// Boots counted by `boot_check` so far.
    pub boots: u32,
    pub started_at: u64,
}

/// What `boot_check` did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum BootCheck {
    /// Nothing is on trial.
    NoTrial { current: Option<String> },
    /// The version on trial boots again: boot `boot` of at most `attempts`.
    OnTrial {
        version: String,
        boot: u32,
        attempts: u32,
    },
    /// Not marked good in `attempts` boots: back on `to`.
    Reverted {
        from: String,
        to: String,
        reason: String,
        /// What the revert hooks did, a line each.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        hooks: Vec<String>,
    },
    /// Not marked good in `attempts` boots, but nothing to go back to (the first install):
    /// it stays, recorded as failed.
    Kept { version: String, reason: String },
}

/// What `mark_good` did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum MarkGood {
    /// The trial of `version` ended: it stays.
    Marked { version: String },
    /// Nothing was on trial.
    NoTrial { current: Option<String> },
}

impl Device {
    /// The running version's trial. A trial of another version than `current` is stale (a
    /// switch that did not happen, or was undone) and counts as none; an unreadable trial
    /// file is logged and counts as none.
    pub fn trial(&self) -> Result<Option<Trial>> {
        let bytes = match self.dir.read(TRIAL) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(TRIAL)(e)),
        };
        let t: Trial = match serde_json::from_slice(&bytes) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.root.join(TRIAL).display(), error = %e, "unreadable trial: treated as none");
                return Ok(None);
            }
        };
        let current = self.current()?;
        Ok((current.as_deref() == Some(t.version.as_str())).then_some(t))
    }

    /// Puts `version` on trial, before `current` is switched to it.
    pub(super) fn start_trial(&self, version: &str) -> Result<()> {
        let t = Trial {
            version: version.to_string(),
            previous: self.current()?.map(|v| v.into_string()),
            boots: 0,
            started_at: now(),
        };
        self.write_trial(&t)
    }

    fn write_trial(&self, t: &Trial) -> Result<()> {
        let json = serde_json::to_vec_pretty(t).expect("trial serialises");
        self.write_atomic(TRIAL, &json)
    }

    /// The last version marked good, if any.
    pub fn last_good(&self) -> Option<String> {
        self.dir
            .read_to_string(GOOD)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// Ends any trial (the version is good, or an operator rolled back by hand).
    pub fn end_trial(&self) -> Result<()> {
        match self.dir.remove_file(TRIAL) {
            Ok(()) => self.sync_dir("state"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(TRIAL)(e)),
        }
    }

    /// Confirms the version on trial: it stays, and later boots count nothing.
    pub fn mark_good(&self) -> Result<MarkGood> {
        match self.trial()? {
            Some(t) => {
                self.write_atomic(GOOD, format!("{}\n", t.version).as_bytes())?;
                self.end_trial()?;
                tracing::info!(version = t.version, "marked good: the trial ended");
                Ok(MarkGood::Marked { version: t.version })
            }
            None => {
                self.end_trial()?;
                Ok(MarkGood::NoTrial {
                    current: self.current()?.map(|v| v.into_string()),
                })
            }
        }
    }

    /// Counts one boot of the version on trial; past `attempts` boots, reverts to the
    /// version before it (see the module's state machine).
    pub fn boot_check(&self, attempts: u32) -> Result<BootCheck> {
        let Some(mut t) = self.trial()? else {
            self.end_trial()?;
            return Ok(BootCheck::NoTrial {
                current: self.current()?.map(|v| v.into_string()),
            });
        };
        t.boots = t.boots.saturating_add(1);
        if t.boots <= attempts {
            self.write_trial(&t)?;
            tracing::info!(
                version = t.version,
                boot = t.boots,
                attempts,
                "booting the version on trial"
            );
            return Ok(BootCheck::OnTrial {
                version: t.version,
                boot: t.boots,
                attempts,
            });
        }
        let reason = format!("{} was not marked good within {attempts} boots", t.version);
        // Only back to the version before, and only to a whole deployment of it.
        let back = match &t.previous {
            Some(p)
                if self.previous()?.as_deref() == Some(p.as_str()) && self.is_complete(p, None) =>
            {
                Some(p.clone())
            }
            _ => None,
        };
        let Some(to) = back else {
            // The first install, or `previous` no longer the version before: nothing to
            // go back to that this trial knows.
            self.write_status(&Status {
                last_result: Some("failed".into()),
                last_version: Some(t.version.clone()),
                last_error: Some(format!("{reason}; there is no version to revert to")),
                updated_at: now(),
            })?;
            self.end_trial()?;
            tracing::error!(
                version = t.version,
                "{reason}; there is no version to revert to: it stays"
            );
            return Ok(BootCheck::Kept {
                version: t.version,
                reason,
            });
        };
        // The status first: a revert cut short is done again at the next boot, and the
        // server hears of it either way.
        self.write_status(&Status {
            last_result: Some("rolled-back".into()),
            last_version: Some(t.version.clone()),
            last_error: Some(reason.clone()),
            updated_at: now(),
        })?;
        self.rollback()?;
        self.end_trial()?;
        tracing::warn!(from = t.version, to, "{reason}: reverted");
        let (hooks, _) = self.run_hooks("revert", Some(&t.version), &to, false);
        Ok(BootCheck::Reverted {
            from: t.version,
            to,
            reason,
            hooks,
        })
    }
}
