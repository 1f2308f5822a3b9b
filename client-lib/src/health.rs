//! Scripts of drop-in folders, each executable file in name order with a time limit: the
//! image's health checks before a version on trial is marked good (e.g.
//! `/etc/deltaroot/health.d`; the first that fails or overruns stops the rest, and its error
//! names the script, how it ended and the end of its output), and the device's hooks around a
//! switch ([`Hooks`]: `pre-switch.d`, `post-switch.d`, `revert.d`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The end of a failed check's output kept in its error.
const OUTPUT_TAIL: usize = 2000;

/// The check scripts in `dir`: executable regular files, in name order; names starting
/// with `.` (editor leftovers, hidden files) are left out. A folder that does not exist
/// holds none.
pub fn scripts(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(Error::io(dir))?;
        let path = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(Error::io(&path))?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Runs every check of `dir` (see [`scripts`]), each within `limit`; the names of those
/// that passed, or the first failure.
pub fn run_checks(dir: &Path, limit: Duration) -> Result<Vec<PathBuf>> {
    let all = scripts(dir)?;
    for script in &all {
        run_one(script, limit, &[])?;
        tracing::info!(script = %script.display(), "health check passed");
    }
    Ok(all)
}

/// The device's hooks: `<dir>/pre-switch.d` runs before `current` moves to a new version
/// (a failure stops the switch), `<dir>/post-switch.d` after it, `<dir>/revert.d` after
/// `boot_check` switched back. Each script gets `DELTAROOT_EVENT`, `DELTAROOT_ROOT`,
/// `DELTAROOT_FROM` (empty for nothing), `DELTAROOT_TO` and `DELTAROOT_TREE` (the tree of
/// `DELTAROOT_TO`) in its environment.
#[derive(Clone, Debug)]
pub struct Hooks {
    pub dir: PathBuf,
    /// The time each hook may take.
    pub limit: Duration,
}

/// What the hooks of one event did, a line per script: its name, `ok` or how it failed,
/// and the end of its output.
pub type HookLines = Vec<String>;

impl Hooks {
    /// Runs the hooks of `event` (`pre-switch`, `post-switch`, `revert`) with `env`; every
    /// one, or up to the first failure when `stop_at_failure`. The lines of those that ran,
    /// and the first failure.
    pub fn run(
        &self,
        event: &str,
        env: &[(&str, String)],
        stop_at_failure: bool,
    ) -> (HookLines, Option<Error>) {
        let dir = self.dir.join(format!("{event}.d"));
        let all = match scripts(&dir) {
            Ok(a) => a,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut env: Vec<(&str, String)> = env.to_vec();
        env.push(("DELTAROOT_EVENT", event.to_string()));
        let (mut lines, mut first) = (Vec::new(), None);
        for script in &all {
            let name = script.file_name().unwrap_or_default().to_string_lossy();
            match run_one(script, self.limit, &env) {
                Ok(tail) => {
                    tracing::info!(event, hook = %name, "hook ran");
                    lines.push(format!("{event} {name}: ok{}", shown(&tail)));
                }
                Err(e) => {
                    tracing::warn!(event, hook = %name, error = %e, "hook failed");
                    lines.push(format!("{event} {name}: {e}"));
                    first.get_or_insert(e);
                    if stop_at_failure {
                        break;
                    }
                }
            }
        }
        (lines, first)
    }
}

fn shown(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

/// Runs `script` with `env` added; the end of its output, or how it failed.
fn run_one(script: &Path, limit: Duration, env: &[(&str, String)]) -> Result<String> {
    let fail = |what: String| Error::Script {
        script: script.to_owned(),
        what,
    };
    use std::os::unix::process::CommandExt;
    // A process group of its own, so that what the script started goes with it: a
    // leftover `sleep` holding its output open would otherwise hold this up too.
    let mut child = Command::new(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    // Both pipes are drained while the script runs, so a talkative one never blocks.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let group = rustix::process::Pid::from_raw(child.id() as i32);
    let kill_group = || {
        if let Some(g) = group {
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
    };
    let start = Instant::now();
    let status = loop {
        match child
            .try_wait()
            .map_err(|e| fail(format!("waiting: {e}")))?
        {
            Some(s) => break Some(s),
            None if start.elapsed() >= limit => {
                kill_group();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // Whatever the script left running in its group ends with it.
    kill_group();
    let mut output = out.join().unwrap_or_default();
    output.extend(err.join().unwrap_or_default());
    let tail = {
        let text = String::from_utf8_lossy(&output);
        let text = text.trim_end();
        let cut = text
            .char_indices()
            .rev()
            .nth(OUTPUT_TAIL)
            .map_or(0, |(i, _)| i);
        text[cut..].to_string()
    };
    let with_output = |what: String| {
        if tail.is_empty() {
            what
        } else {
            format!("{what}; its output ends: {tail}")
        }
    };
    match status {
        None => Err(fail(with_output(format!(
            "still running after {} s: stopped",
            limit.as_secs()
        )))),
        Some(s) if !s.success() => Err(fail(with_output(format!("failed ({s})")))),
        Some(_) => Ok(tail),
    }
}
