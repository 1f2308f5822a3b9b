//! `deltaroot-apply OLD PATCH --out NEW`: one delta applied to one file on a device, with
//! nothing else linked in (no HTTP, no argument-parsing framework), so the process costs
//! little more than the decoder. The work is `deltaroot_client::apply::apply_file`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

const USAGE: &str = "usage: deltaroot-apply OLD PATCH --out NEW

Applies the deltaroot delta PATCH (as `deltaroot diff` writes it) to the file OLD, checks the
result against the hash PATCH names, and writes it to NEW (replacing it whole, or not at all).";

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
    let (mut paths, mut out) = (Vec::new(), None);
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
            Some(s) if s.starts_with('-') && s.len() > 1 => bail!("unknown option {s}\n\n{USAGE}"),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let (Ok([old, patch]), Some(out)) = (<[PathBuf; 2]>::try_from(paths), out) else {
        bail!("{USAGE}");
    };
    let n = deltaroot_client::apply::apply_file(&old, &patch, &out)
        .with_context(|| format!("applying {} to {}", patch.display(), old.display()))?;
    println!("{}: {n} bytes, verified", out.display());
    Ok(())
}
