//! Progress of a publish on stderr: bars on a terminal, plain lines elsewhere (CI logs, where
//! bars draw nothing), both fed by the same calls.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deltaroot_format::human_bytes;
use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nothing (`--quiet`).
    Off,
    /// Bars redrawn in place: stderr is a terminal.
    Bars,
    /// A plain line per phase at most every `every` (and one when it ends): stderr is not a
    /// terminal.
    Lines { every: Duration },
}

/// How often a bar is redrawn when nothing completes.
const STEADY_TICK: Duration = Duration::from_millis(250);

/// The interval of [`Mode::Lines`] unless `--progress-every` says otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

impl Mode {
    /// Bars on a terminal, else lines every `every`.
    pub fn auto(every: Duration) -> Mode {
        if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines { every }
        }
    }
}

/// One phase's progress (scanning, encoding, packing): files and bytes done, of a total when
/// it is known.
pub struct Progress {
    phase: &'static str,
    bar: ProgressBar,
    /// The total was not known: the bar grows with what is done.
    grows: bool,
    lines: Option<Lines>,
}

struct Lines {
    every: Duration,
    started: Instant,
    last: Mutex<Instant>,
    files: AtomicU64,
    bytes: AtomicU64,
    /// Totals, 0 when unknown (scanning).
    total_files: u64,
    total_bytes: u64,
}

impl Progress {
    /// A phase of `total_files` files of `total_bytes` bytes; zeros when the totals are not
    /// known beforehand.
    pub fn new(mode: Mode, phase: &'static str, total_files: u64, total_bytes: u64) -> Progress {
        let bar = match mode {
            Mode::Bars => {
                let b = ProgressBar::new(total_bytes);
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:>9} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .expect("template is valid")
                    .progress_chars("=> "),
                );
                b.set_message(phase);
                // Redrawn on a timer, not only when a file is done: the rate and the ETA
                // (indicatif's smoothed estimate) move steadily even while one large file
                // takes a minute, instead of jumping at each completion.
                b.enable_steady_tick(STEADY_TICK);
                b
            }
            Mode::Off | Mode::Lines { .. } => ProgressBar::hidden(),
        };
        let lines = match mode {
            Mode::Lines { every } => {
                let now = Instant::now();
                Some(Lines {
                    every,
                    started: now,
                    last: Mutex::new(now),
                    files: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    total_files,
                    total_bytes,
                })
            }
            Mode::Off | Mode::Bars => None,
        };
        Progress {
            phase,
            bar,
            grows: total_bytes == 0,
            lines,
        }
    }

    /// One more file of `bytes` bytes done (from any thread). Where the total was not known,
    /// the bar's length grows with it.
    pub fn file_done(&self, bytes: u64) {
        if self.grows {
            self.bar.inc_length(bytes);
        }
        self.bar.inc(bytes);
        let Some(l) = &self.lines else { return };
        let files = l.files.fetch_add(1, Ordering::Relaxed) + 1;
        let done = l.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let mut last = l.last.lock().expect("not poisoned");
        if last.elapsed() >= l.every {
            *last = Instant::now();
            eprintln!("{}", l.line(self.phase, files, done));
        }
    }

    /// The phase is over: the bar is cleared; in lines mode a closing line is printed.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(l) = &self.lines {
            let files = l.files.load(Ordering::Relaxed);
            let bytes = l.bytes.load(Ordering::Relaxed);
            if files == 0 && l.total_files == 0 {
                // A phase that counts nothing (packing).
                let secs = l.started.elapsed().as_secs_f64();
                eprintln!("{}: done in {secs:.1} s", self.phase);
                return;
            }
            eprintln!(
                "{}: done, {} files, {} in {:.1} s",
                self.phase,
                grouped(files),
                human_bytes(bytes),
                l.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Lines {
    /// `encoding: 1,234/5,678 files, 120.0 MB of 400.0 MB`, or without totals
    /// `scanning: 1,234 files, 120.0 MB`.
    fn line(&self, phase: &str, files: u64, bytes: u64) -> String {
        if self.total_files == 0 {
            format!("{phase}: {} files, {}", grouped(files), human_bytes(bytes))
        } else {
            format!(
                "{phase}: {}/{} files, {} of {}",
                grouped(files),
                grouped(self.total_files),
                human_bytes(bytes),
                human_bytes(self.total_bytes)
            )
        }
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let lead = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let (head, rest) = digits.split_at(lead);
    let mut out = head.to_string();
    for group in rest.as_bytes().chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("digits are ASCII"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1234), "1,234");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn lines_name_the_phase_files_and_bytes() {
        let l = Progress::new(
            Mode::Lines {
                every: Duration::ZERO,
            },
            "encoding",
            5678,
            400_000_000,
        );
        let lines = l.lines.as_ref().unwrap();
        assert_eq!(
            lines.line("encoding", 1234, 120_000_000),
            "encoding: 1,234/5,678 files, 120.0 MB of 400.0 MB"
        );
    }
}
