//! The `deltaroot` command line: argument types and dispatch. `main.rs` only calls [`run`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use deltaroot_client::format::Method;

use crate::engine::{self, EngineOptions, MethodSet};
use crate::publish::{publish, PublishOptions};
use crate::sink::{DirSink, ServerSink, Sink};

#[derive(Parser)]
#[command(
    version,
    about = "Publishes image trees as signed releases with per-file deltas"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Engine {
    /// zstd level for deltas and for the objects updates download.
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// zstd level for the objects of files a delta sends, which only fresh installs download
    /// (level 19 compresses modules 4% smaller than 16, at a third of the speed).
    #[arg(long, default_value_t = 16)]
    install_level: i32,
    /// Largest file given to bsdiff, in MiB.
    #[arg(long, default_value_t = 256)]
    bsdiff_max_mib: u64,
    /// Use only this delta method (zstd: whole files only) instead of the smallest of all,
    /// to measure what one method sends.
    #[arg(long, value_name = "METHOD", value_parser = method_parser(true))]
    method: Option<Method>,
    /// Never send deltas made by this method (repeatable): such files go as another method's
    /// delta or whole.
    ///
    /// For fleets whose devices' apply time matters more than download bytes. The xz method
    /// rebuilds a compressed kernel bit for bit on the device, which costs the device tens of
    /// seconds of one core (liblzma at preset 6 over the whole kernel); `--skip-method xz`
    /// sends the kernel as another delta or whole, for more bytes. A skipped method is not
    /// used either where gzip and xz deltas choose how to diff the contents they decompress,
    /// nor by the server when it builds deltas to this release for devices further behind.
    #[arg(long, value_name = "METHOD", value_parser = method_parser(false))]
    skip_method: Vec<Method>,
}

/// Parses a method by its name in the container format (`Method::name`); `zstd`, the whole
/// file, only where `whole` is set (it is never skipped: objects are always made).
fn method_parser(whole: bool) -> impl TypedValueParser<Value = Method> {
    let names = Method::ALL
        .into_iter()
        .filter(move |m| whole || *m != Method::Zstd)
        .map(Method::name);
    PossibleValuesParser::new(names)
        .map(|name| Method::from_name(&name).expect("a possible value names a method"))
}

impl Engine {
    fn options(&self) -> anyhow::Result<EngineOptions> {
        let skip: MethodSet = self.skip_method.iter().copied().collect();
        if let Some(only) = self.method.filter(|m| skip.contains(*m)) {
            anyhow::bail!("--skip-method {only} skips the only method --method {only} runs");
        }
        Ok(EngineOptions {
            level: self.level,
            install_level: self.install_level,
            bsdiff_max: self.bsdiff_max_mib << 20,
            only: self.method,
            skip,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write NAME.key (mode 0600) and NAME.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Diff OLD and NEW trees (directories or .tar/.tar.zst) into a signed release.
    Publish {
        /// The previous tree; omit for a first release.
        #[arg(num_args = 1..=2, required = true, value_name = "[OLD] NEW")]
        trees: Vec<PathBuf>,
        #[arg(long)]
        product: String,
        /// Version of OLD, the release devices come from.
        #[arg(long)]
        from_version: Option<String>,
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "stable")]
        channel: String,
        #[arg(long)]
        key: PathBuf,
        /// Server base URL to upload to.
        #[arg(long, conflicts_with = "out", requires = "token")]
        server: Option<String>,
        #[arg(long, env = "DELTAROOT_TOKEN")]
        token: Option<String>,
        /// Write a static release folder instead.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
        /// Peak memory to stay under, in MiB: large diffs wait for room instead of running
        /// side by side (one larger than the whole budget runs alone).
        #[arg(long, default_value_t = 2048, value_name = "MIB")]
        memory_mib: u64,
        /// Write every download (bytes, method, size, packed, path; largest first) as TSV to
        /// FILE; a packed download counts its share of the pack.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Send every download of the update alone instead of packing the small ones together.
        #[arg(long)]
        no_packs: bool,
        #[command(flatten)]
        engine: Engine,
    },
    /// Diff one file into a delta container (like bsdiff).
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        engine: Engine,
    },
    /// Apply a delta container to one file (like bspatch).
    Apply {
        old: PathBuf,
        patch: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let (k, p) = crate::keys::keygen(&out)
                .with_context(|| format!("writing keys {}", out.display()))?;
            println!("wrote {} and {}", k.display(), p.display());
        }
        Command::Publish {
            trees,
            product,
            from_version,
            version,
            channel,
            key,
            server,
            token,
            out,
            json,
            quiet,
            memory_mib,
            report,
            no_packs,
            engine,
        } => {
            let (old, new) = match trees.as_slice() {
                [new] => (None, new),
                [old, new] => (Some(old.as_path()), new),
                _ => unreachable!("clap bounds the count"),
            };
            if old.is_some() != from_version.is_some() {
                anyhow::bail!("--from-version names the OLD tree: give both or neither");
            }
            let eng = engine.options()?;
            let key = crate::keys::load(&key)?;
            let sink: Box<dyn Sink> = match (server, out) {
                (Some(url), None) => {
                    Box::new(ServerSink::new(&url, token.as_deref().unwrap_or_default())?)
                }
                (None, Some(dir)) => Box::new(DirSink::new(&dir)?),
                _ => anyhow::bail!("give --server URL --token T, or --out DIR"),
            };
            let opts = PublishOptions {
                product,
                version,
                from_version,
                channel,
                engine: eng,
                created: None,
                progress: !quiet,
                memory_budget: memory_mib << 20,
                packs: !no_packs,
            };
            let summary = publish(old, new, &key, sink.as_ref(), &opts)
                .with_context(|| format!("publishing {}", new.display()))?;
            if let Some(path) = &report {
                crate::publish::write_report(&summary, path)
                    .with_context(|| format!("writing report {}", path.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
        }
        Command::Diff {
            old,
            new,
            out,
            engine,
        } => {
            let opts = engine.options()?;
            let o = std::fs::read(&old).with_context(|| format!("reading {}", old.display()))?;
            let n = std::fs::read(&new).with_context(|| format!("reading {}", new.display()))?;
            let best = engine::diff_file(&o, &n, &opts)?.with_context(|| {
                format!(
                    "method {} does not apply to these files",
                    engine.method.map_or("", Method::name)
                )
            })?;
            std::fs::write(&out, &best.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: {} bytes by {} ({} -> {} bytes)",
                out.display(),
                best.bytes.len(),
                best.method,
                o.len(),
                n.len()
            );
        }
        Command::Apply { old, patch, out } => apply(&old, &patch, &out)?,
    }
    Ok(())
}

/// `deltaroot apply`: [`deltaroot_client::apply::apply_file`], as `deltaroot-apply` runs it on
/// a device.
pub fn apply(old: &Path, patch: &Path, out: &Path) -> anyhow::Result<()> {
    let n = deltaroot_client::apply::apply_file(old, patch, out)
        .with_context(|| format!("applying {} to {}", patch.display(), old.display()))?;
    println!("{}: {n} bytes, verified", out.display());
    Ok(())
}
