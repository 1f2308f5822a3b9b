//! `deltaroot-apply OLD PATCH --out NEW [--mode OCTAL]`: one delta applied to one file on a
//! device, with nothing else linked in (no HTTP, no argument-parsing framework), so the
//! process costs little more than the decoder. The work is
//! `deltaroot_format::apply::apply_file_with`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

const USAGE: &str = "usage: deltaroot-apply OLD PATCH --out NEW [--mode OCTAL]

Applies the deltaroot delta PATCH (as `deltaroot diff` writes it) to the file OLD, checks the
result against the hash PATCH names, and writes it to NEW (replacing it whole, or not at all;
a symlink at NEW is replaced, never followed).

NEW gets OLD's mode (setuid and setgid included) and, when run as root, OLD's owner; run by
someone else than OLD's owner, the setuid and setgid bits are dropped. --mode sets the mode
instead (e.g. --mode 0755).";

fn main() -> ExitCode {
    match run(std::env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deltaroot-apply: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let (mut paths, mut out, mut mode) = (Vec::new(), None, None);
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            Some("-V" | "--version") => {
                println!("deltaroot-apply {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            Some("--out") => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
            Some(s) if s.starts_with("--out=") => out = Some(PathBuf::from(&s["--out=".len()..])),
            Some("--mode") => mode = Some(octal(args.next().context("--mode needs a mode")?)?),
            Some(s) if s.starts_with("--mode=") => mode = Some(octal(s["--mode=".len()..].into())?),
            Some(s) if s.starts_with('-') && s.len() > 1 => bail!("unknown option {s}\n\n{USAGE}"),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let (Ok([old, patch]), Some(out)) = (<[PathBuf; 2]>::try_from(paths), out) else {
        bail!("{USAGE}");
    };
    let opts = deltaroot_format::apply::ApplyOptions { mode };
    let n = deltaroot_format::apply::apply_file_with(&old, &patch, &out, &opts)
        .with_context(|| format!("applying {} to {}", patch.display(), old.display()))?;
    println!("{}: {n} bytes, verified", out.display());
    Ok(())
}

/// A permission mode in octal, `0755` or `4755`, at most `7777`.
fn octal(s: OsString) -> anyhow::Result<u32> {
    let text = s.to_string_lossy();
    u32::from_str_radix(&text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .with_context(|| format!("--mode {text:?} is not an octal mode (0000 to 7777)"))
}
