//! Progress lines on stderr while publishing: a bar, bytes done of the total, the rate and
//! the time left, redrawn at most ten times a second and only on a terminal. (Integer and
//! plain float arithmetic only: the binary links no libm, whose loading alone costs every
//! `deltaroot` run a third of a megabyte of touched pages.)

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One progress line, shared by the threads doing the work.
pub struct Progress {
    line: Option<Line>,
}

struct Line {
    msg: &'static str,
    total: AtomicU64,
    done: AtomicU64,
    start: Instant,
    /// When the line was last drawn (`None`: never).
    drawn: Mutex<Option<Instant>>,
}

/// Width of the bar, in characters.
const WIDTH: u64 = 40;
/// Least time between two draws.
const EVERY: Duration = Duration::from_millis(100);

impl Progress {
    /// A line labelled `msg` for `total` bytes, drawn when `show` is set and stderr is a
    /// terminal.
    pub fn new(show: bool, total: u64, msg: &'static str) -> Progress {
        let line = (show && std::io::stderr().is_terminal()).then(|| Line {
            msg,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            start: Instant::now(),
            drawn: Mutex::new(None),
        });
        Progress { line }
    }

    /// Adds `n` bytes to the total.
    pub fn inc_length(&self, n: u64) {
        if let Some(l) = &self.line {
            l.total.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(l) = &self.line {
            l.done.fetch_add(n, Ordering::Relaxed);
            l.draw();
        }
    }

    /// Erases the line, if it was drawn.
    pub fn finish_and_clear(&self) {
        let Some(l) = &self.line else { return };
        let drawn = l.drawn.lock().map(|d| d.is_some()).unwrap_or(false);
        if drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Line {
    fn draw(&self) {
        let now = Instant::now();
        let Ok(mut drawn) = self.drawn.try_lock() else {
            return; // another thread is drawing
        };
        if drawn.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        *drawn = Some(now);
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(0);
        let bar: String = (0..WIDTH)
            .map(|i| match i.cmp(&filled) {
                std::cmp::Ordering::Less => '=',
                std::cmp::Ordering::Equal => '>',
                std::cmp::Ordering::Greater => ' ',
            })
            .collect();
        let secs = now.duration_since(self.start).as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            (total.saturating_sub(done) as f64 / rate) as u64
        } else {
            0
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{:>9} [{bar}] {}/{} {}/s eta {}s",
            self.msg,
            bytes(done),
            bytes(total),
            bytes(rate as u64),
            eta
        );
        let _ = err.flush();
    }
}

/// `n` bytes in binary units, one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut unit, mut scaled) = (0, n);
    while scaled >= 1 << 10 && unit + 1 < UNITS.len() {
        scaled >>= 10;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    let tenths = (u128::from(n) * 10) >> (10 * unit);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
        assert_eq!(bytes(u64::MAX), "16777215.9 TiB");
    }

    #[test]
    fn a_hidden_line_counts_nothing_and_draws_nothing() {
        let p = Progress::new(false, 10, "test");
        p.inc_length(5);
        p.inc(3);
        p.finish_and_clear();
        assert!(p.line.is_none());
    }
}
