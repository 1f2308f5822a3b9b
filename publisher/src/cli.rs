//! The `deltaroot` command line: argument types and dispatch. `main.rs` only calls [`run`].

use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use deltaroot_format::Method;

use crate::error::{Error, Result};
use crate::progress;
use crate::publish::{publish_with, PublishOptions};
use crate::sink::{DirSink, ServerSink, Sink};
use deltaroot_engine::{self, EngineOptions, MethodSet};

#[derive(Parser)]
#[command(
    name = "deltaroot",
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
    /// zstd level for the objects of files a delta sends, which only fresh installs download.
    /// On trees/kernel's 4,044 files up to 8 MiB, level 14 compresses 3% larger than 16 at
    /// 1.9x its speed (91.7 against 89.1 MB; 11.1 against 5.8 MB/s per core), where those
    /// objects took a third of the publish's CPU; 9 is 7% larger at 9x, 19 3% smaller at 1/2.
    #[arg(long, default_value_t = 14)]
    install_level: i32,
    /// Keep ELF deltas' payloads in zstd frames, as agents that predate xz-framed payloads
    /// read (they fetch the whole file otherwise); xz sends 5-7% less of such deltas.
    #[arg(long)]
    elf_zstd: bool,
    /// Largest file given to bsdiff, in MiB (its suffix sort needs about 9x the file's size).
    #[arg(long, default_value_t = 1024)]
    bsdiff_max_mib: u64,
    /// Largest pair (both files together) given to zstd patch-from, in MiB: a device rebuilds
    /// such a content with both files and the frame's window in memory, where bsdiff and
    /// whole files stream into the file in a few MiB.
    #[arg(long, default_value_t = 64)]
    patch_from_max_mib: u64,
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
    fn options(&self) -> Result<EngineOptions> {
        let skip: MethodSet = self.skip_method.iter().copied().collect();
        if let Some(only) = self.method.filter(|m| skip.contains(*m)) {
            return Err(Error::Usage(format!(
                "--skip-method {only} skips the only method --method {only} runs"
            )));
        }
        Ok(EngineOptions {
            level: self.level,
            install_level: self.install_level,
            bsdiff_max: self.bsdiff_max_mib << 20,
            patch_from_max: self.patch_from_max_mib << 20,
            only: self.method,
            elf_xz: !self.elf_zstd,
            skip,
        })
    }
}

// Parsed once per run: the size of the `publish` variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Write NAME.key (mode 0600) and NAME.pub.
    Keygen {
        /// NAME: where to write the key pair (NAME.key, the secret, is never overwritten).
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// Diff OLD and NEW trees (directories or .tar/.tar.zst) into a signed release.
    ///
    /// Before encoding anything, the server (or the --out folder) is asked whether --version
    /// exists already, and for release --from-version's signed manifest: it must verify with
    /// --key and list exactly OLD's entries, else nothing is published.
    Publish {
        /// The previous tree (the tree of release --from-version; omit both for a first
        /// release) and the new one.
        #[arg(num_args = 1..=2, required = true, value_name = "[OLD] NEW")]
        trees: Vec<PathBuf>,
        /// The product the release belongs to.
        #[arg(long)]
        product: String,
        /// Version of OLD, the release devices come from.
        #[arg(long)]
        from_version: Option<String>,
        /// Version of the new release (refused if the product has it already).
        #[arg(long)]
        version: String,
        /// The channel to point at the new release (with a server, the token needs the
        /// operate scope as well as publish).
        #[arg(long, default_value = "stable", value_name = "NAME")]
        channel: String,
        /// Publish the release on no channel: an operator promotes it later
        /// (`deltaroot-server promote`); a token with the publish scope alone is enough.
        #[arg(long, conflicts_with = "percent")]
        no_channel: bool,
        /// Offer the release to this share (0-100) of the channel's devices at first, a staged
        /// rollout an operator widens with `deltaroot-server rollout` (default: all of them).
        #[arg(long, value_name = "PERCENT", requires = "server")]
        percent: Option<f64>,
        /// The product's secret key (from keygen), which signs the release.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The public key (.pub) of an earlier release key of the product, replaced by
        /// rotate-key, with which release --from-version may be signed (repeatable).
        #[arg(long, value_name = "FILE")]
        previous_key: Vec<PathBuf>,
        /// Server base URL to upload to.
        #[arg(
            long,
            value_name = "URL",
            env = "DELTAROOT_SERVER",
            conflicts_with = "out",
            requires = "token"
        )]
        server: Option<String>,
        /// Upload token for --server.
        #[arg(long, env = "DELTAROOT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM file of a private certificate authority (one or more certificates) to trust,
        /// besides the built-in roots, for a --server whose certificate it signed.
        #[arg(long, value_name = "FILE", env = "SSL_CERT_FILE")]
        ca_cert: Option<PathBuf>,
        /// Write a static release folder instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
        /// When stderr is not a terminal (CI logs), print a plain progress line at most every
        /// SECS seconds instead of bars (0: one per file).
        #[arg(long, value_name = "SECS", default_value_t = progress::DEFAULT_EVERY.as_secs())]
        progress_every: u64,
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
        /// Leave out of the image every path of OLD and NEW this glob matches (repeatable),
        /// matched against the tree-relative path: `*` within one component, `**` across
        /// them, `?`, `[abc]` (e.g. `run/*.sock`, `**/__pycache__`, `var/cache`). A
        /// directory matched is left out whole; a socket left out is no error.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Declare PATH shared (repeatable; e.g. `--shared var/lib --shared home`): the
        /// device's data, kept once outside its deployments and linked into each, which no
        /// update or rollback rewrites. NEW must hold PATH as a directory (its mode and owner
        /// are the shared folder's when a device first makes it); what NEW holds in it is left
        /// out of the release. OLD is read without what its release shares.
        #[arg(long, value_name = "PATH")]
        shared: Vec<String>,
        /// Remove the first N components of each member name of a tar OLD or NEW (as
        /// `tar --strip-components`), e.g. 1 for a tar of `rootfs/etc/…`.
        #[arg(long, value_name = "N", default_value_t = 0)]
        strip_components: usize,
        #[command(flatten)]
        engine: Engine,
    },
    /// Replace a product's release key on a server: --new-key signs its releases from now
    /// on. Devices that trust the current key learn the new one from the server's answers
    /// and refuse the current one for anything new; releases it signed stay installable.
    RotateKey {
        /// The product whose key changes.
        #[arg(long)]
        product: String,
        /// The product's current secret key, which signs the rotation.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The secret key that replaces it (from keygen).
        #[arg(long, value_name = "FILE")]
        new_key: PathBuf,
        /// Server base URL.
        #[arg(long, value_name = "URL", env = "DELTAROOT_SERVER")]
        server: String,
        /// Token with the publish scope on the product.
        #[arg(long, env = "DELTAROOT_TOKEN", hide_env_values = true)]
        token: String,
        /// PEM file of a private certificate authority to trust for --server.
        #[arg(long, value_name = "FILE", env = "SSL_CERT_FILE")]
        ca_cert: Option<PathBuf>,
    },
    /// Diff one file into a delta container (like bsdiff).
    Diff {
        /// The file devices hold.
        old: PathBuf,
        /// The file they should end up with.
        new: PathBuf,
        /// Where to write the delta.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        engine: Engine,
    },
    /// Say for each FILE whether the ELF method's layout parser accepts it (`PATH: ok: KIND`)
    /// or why not (`PATH: refused: REASON`), reading its headers only; exits non-zero when any
    /// is refused.
    InspectElf {
        /// The files to inspect.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the completion script for SHELL to stdout (e.g. `deltaroot completions bash >
    /// /etc/bash_completion.d/deltaroot`).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages into DIR: deltaroot.1 and one per command (deltaroot-publish.1, …).
    Man {
        /// The folder to write the pages into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Apply a delta container to one file (like bspatch).
    Apply {
        /// The file the delta was made from.
        old: PathBuf,
        /// The delta (from diff).
        patch: PathBuf,
        /// Where to write the new file, verified against the hash the delta names.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Permission bits of the new file, in octal (e.g. 0755); default: OLD's.
        #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
        mode: Option<u32>,
    },
}

/// An octal mode of at most 0o7777 (`755`, `0755`, `0o4755`).
fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode of at most 7777")),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let (k, p) = crate::keys::keygen(&out)?;
            println!("wrote {} and {}", k.display(), p.display());
        }
        Command::RotateKey {
            product,
            key,
            new_key,
            server,
            token,
            ca_cert,
        } => {
            let (old, new) = (crate::keys::load(&key)?, crate::keys::load(&new_key)?);
            let sink = ServerSink::with_ca_cert(&server, &token, ca_cert.as_deref())?;
            let r = sink.rotate_key(&product, &old, &new)?;
            println!(
                "product {}: release key {} replaced by {}; publish with {} from now on",
                r.product,
                r.old_key_id,
                r.key_id,
                new_key.display()
            );
        }
        Command::Publish {
            trees,
            product,
            from_version,
            version,
            channel,
            no_channel,
            percent,
            key,
            previous_key,
            server,
            token,
            ca_cert,
            out,
            json,
            quiet,
            progress_every,
            memory_mib,
            report,
            no_packs,
            exclude,
            shared,
            strip_components,
            engine,
        } => {
            let (old, new) = match trees.as_slice() {
                [new] => (None, new),
                [old, new] => (Some(old.as_path()), new),
                _ => unreachable!("clap bounds the count"),
            };
            if old.is_some() != from_version.is_some() {
                return Err(Error::Usage(
                    "--from-version names the OLD tree: give both or neither".into(),
                ));
            }
            let eng = engine.options()?;
            let shared = crate::shared::parse(&shared)?;
            let key = crate::keys::load(&key)?;
            let sink: Box<dyn Sink> = match (server, out) {
                (Some(url), None) => Box::new(ServerSink::with_ca_cert(
                    &url,
                    token.as_deref().unwrap_or_default(),
                    ca_cert.as_deref(),
                )?),
                (None, Some(dir)) => Box::new(DirSink::new(&dir)?),
                _ => {
                    return Err(Error::Usage(
                        "give --server URL --token T, or --out DIR".into(),
                    ))
                }
            };
            let opts = PublishOptions {
                product,
                version,
                from_version,
                channel: (!no_channel).then_some(channel),
                percent,
                engine: eng,
                created: None,
                progress: !quiet,
                memory_budget: memory_mib << 20,
                packs: !no_packs,
                input: crate::input::InputOptions {
                    exclude: crate::exclude::Exclude::new(&exclude),
                    strip_components,
                    shared,
                },
                previous_keys: previous_key
                    .iter()
                    .map(|p| crate::keys::load_public(p))
                    .collect::<Result<_>>()?,
            };
            let mode = if quiet {
                progress::Mode::Off
            } else {
                progress::Mode::auto(std::time::Duration::from_secs(progress_every))
            };
            let summary = publish_with(old, new, &key, sink.as_ref(), &opts, mode)?;
            if let Some(path) = &report {
                crate::publish::write_report(&summary, path).map_err(Error::io(path))?;
            }
            if json {
                let text = serde_json::to_string_pretty(&summary).expect("summaries serialise");
                println!("{text}");
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
            let o = std::fs::read(&old).map_err(Error::io(&old))?;
            let n = std::fs::read(&new).map_err(Error::io(&new))?;
            let best = deltaroot_engine::diff_file(&o, &n, &opts)?.ok_or_else(|| Error::Input {
                path: new.clone(),
                what: match engine.method {
                    Some(m) => format!(
                        "method {m} does not encode {} into this file: {}",
                        old.display(),
                        deltaroot_engine::why_not(&o, &n, &opts, m)
                    ),
                    None => format!("no method encodes {} into this file", old.display()),
                },
            })?;
            std::fs::write(&out, &best.bytes).map_err(Error::io(&out))?;
            println!(
                "{}: {} bytes by {} ({} -> {} bytes)",
                out.display(),
                best.bytes.len(),
                best.method,
                o.len(),
                n.len()
            );
        }
        Command::Apply {
            old,
            patch,
            out,
            mode,
        } => apply(&old, &patch, &out, mode)?,
        Command::InspectElf { files } => {
            let refused = crate::inspect::report(&files, &mut std::io::stdout().lock())?;
            if refused > 0 {
                return Err(Error::ElfRefused {
                    refused,
                    files: files.len(),
                });
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "deltaroot",
                &mut std::io::stdout(),
            );
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out).map_err(Error::io(&out))?;
            clap_mangen::generate_to(Cli::command(), &out).map_err(Error::io(&out))?;
        }
    }
    Ok(())
}

/// `deltaroot apply`: [`deltaroot_format::apply::apply_file_with`], as `deltaroot-apply`
/// runs it on a device. The new file gets `mode`, or else the old file's mode, and (as root)
/// the old file's owner, before it is renamed into place: never a moment with another mode.
pub fn apply(old: &Path, patch: &Path, out: &Path, mode: Option<u32>) -> Result<()> {
    use deltaroot_format::apply::{apply_file_with, ApplyOptions};
    let n = apply_file_with(old, patch, out, &ApplyOptions { mode })?;
    println!("{}: {n} bytes, verified", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_of_every_command_has_help() {
        let missing = deltaroot_agent::arguments_without_help(&super::Cli::command());
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn the_walk_finds_an_argument_without_help() {
        let cmd = clap::Command::new("t")
            .subcommand(clap::Command::new("s").arg(clap::Arg::new("bare").long("bare")));
        let missing = deltaroot_agent::arguments_without_help(&cmd);
        assert_eq!(missing, ["t s bare"]);
    }
}
