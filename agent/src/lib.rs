//! deltaroot's device binaries: `deltaroot-agent` (poll, update, roll back, unattended)
//! and `deltaroot-apply` (one delta applied to one file, with nothing else linked in). The
//! work is `deltaroot_client`'s and `deltaroot_format`'s; this crate holds their command
//! lines and the agent's settings file, so that an embedder of `deltaroot-client` takes no
//! clap, no TOML parser and no log formatter.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use deltaroot_client::agent::Settings;
use deltaroot_client::{Error, Result};

/// Reads an agent settings file (TOML, the fields of [`Settings`]; `deploy/agent.toml` is
/// the example). Unknown keys are refused by name. An error names the line and says what is
/// wrong, but never quotes the file: a key file passed as `--config` by mistake must not
/// reach a log.
pub fn settings_file(path: &Path) -> Result<Settings> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        // Not "stream did not contain valid UTF-8" alone: say which file.
        std::io::ErrorKind::InvalidData => Error::Config {
            path: path.to_owned(),
            what: "not a UTF-8 text file".into(),
        },
        _ => Error::io(path)(e),
    })?;
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        Error::Config {
            path: path.to_owned(),
            what: format!("{at}{}", e.message()),
        }
    })
}

/// The `deltaroot-agent` command line.
#[derive(Parser)]
#[command(
    name = "deltaroot-agent",
    version,
    about = "Keeps a device's image tree up to date from a deltaroot server"
)]
pub struct Cli {
    /// TOML file with the settings below; flags override it.
    #[arg(long, env = "DELTAROOT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Device root holding deployments/, current and previous.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Server base URL.
    #[arg(long, conflicts_with = "folder")]
    pub server: Option<String>,
    /// A static release folder (`deltaroot publish --out DIR`, a USB stick), or its
    /// http(s):// URL on a web server, to update from instead of a server: the channel's
    /// `latest` file, or --pin, names the version.
    #[arg(long)]
    pub folder: Option<PathBuf>,
    /// Base URL for objects and deltas, when a mirror serves them.
    #[arg(long)]
    pub objects_url: Option<String>,
    /// The product this device runs (releases and channels are per product).
    #[arg(long)]
    pub product: Option<String>,
    /// Channel to follow (default stable).
    #[arg(long)]
    pub channel: Option<String>,
    /// Trusted publisher public key file; repeat for several.
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// This device's id in checks (default: /etc/machine-id, else one generated into
    /// <root>/state/device-id).
    #[arg(long)]
    pub device_id: Option<String>,
    /// Follow this exact version instead of the channel.
    #[arg(long)]
    pub pin: Option<String>,
    /// PEM certificate of a private certificate authority for the server's HTTPS.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// How long one update may take, in seconds, before it stops with an error naming the
    /// deadline (default 21600: 6 hours).
    #[arg(long)]
    pub update_deadline_secs: Option<u64>,
    /// Most bytes per second the downloads of an update take together, e.g. 200k or 2M
    /// (default: no limit).
    #[arg(long, value_name = "SIZE", value_parser = deltaroot_format::parse_bytes)]
    pub max_rate: Option<u64>,
    /// A folder of hooks: every executable of its pre-switch.d runs before a switch (a
    /// failure stops it), of post-switch.d after, of revert.d after boot-check reverted.
    #[arg(long, value_name = "DIR")]
    pub hooks: Option<PathBuf>,
    /// Deployments kept on the device, newest first (default 2), besides the running,
    /// previous and last good ones, which are always kept.
    #[arg(long, value_name = "N")]
    pub keep_versions: Option<u32>,
    /// Where a plan offers the whole object beside a delta slow to rebuild (a compressed
    /// kernel's xz delta): bytes (always the delta), time (always the object) or auto
    /// (default: whichever takes less time on the speeds this device measured).
    #[arg(long, value_name = "POLICY")]
    pub prefer: Option<deltaroot_client::device::prefer::Prefer>,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Install exactly this version (also to downgrade on purpose).
    Install {
        /// The release to install.
        version: String,
    },
    /// Ask the server whether an update is available and what it costs.
    Check,
    /// Move to the newest release on the channel.
    Update {
        /// Only download and verify it into the device's staging, for a maintenance window
        /// (`--apply-staged` then installs it without the network).
        #[arg(long, conflicts_with = "apply_staged")]
        download_only: bool,
        /// Install what `--download-only` staged, without the network.
        #[arg(long)]
        apply_staged: bool,
    },
    /// Make this device's key pair (state/device.key) if it has none and enroll its public
    /// half with the server: from then on its check-ins are signed, and the server records
    /// no other for it.
    Enroll {
        /// A token of the enroll scope (`deltaroot-server token create NAME --scope enroll`).
        #[arg(long, env = "DELTAROOT_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Show the running and previous versions and the last result.
    Status,
    /// Switch back to the previous version.
    Rollback,
    /// Confirm the version on trial after a switch, so that boot-check keeps it; with
    /// --checks, only if every health check there passes first.
    MarkGood {
        /// A folder of health checks: each executable file in it, in name order, must exit
        /// 0 within --check-timeout-secs (e.g. /etc/deltaroot/health.d).
        #[arg(long, value_name = "DIR")]
        checks: Option<PathBuf>,
        /// The time each health check may take.
        #[arg(long, default_value_t = 60)]
        check_timeout_secs: u64,
    },
    /// Early in each boot: count a boot of the version on trial, and switch back to the
    /// version before it once it has booted --boot-attempts times without mark-good.
    BootCheck {
        /// Boots the version on trial gets.
        #[arg(long, default_value_t = deltaroot_client::agent::DEFAULT_BOOT_ATTEMPTS)]
        boot_attempts: u32,
    },
    /// Print the completion script for SHELL to stdout.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages into DIR: deltaroot-agent.1 and one per command.
    Man {
        /// The folder to write the pages into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `deltaroot-agent completions SHELL`: the script, on `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "deltaroot-agent", out);
}

/// `deltaroot-agent man --out DIR`: deltaroot-agent.1 and a page per command in `dir`.
pub fn man_pages(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

/// Every argument of `cmd` and of its subcommands, at any depth, without a help line, as
/// `command subcommand argument` (clap's generated `--help` and `--version` left out). Every
/// deltaroot command line's tests hold their arguments to it (`deltaroot`,
/// `deltaroot-server` and `deltaroot-agent` take this crate as a dev-dependency for it).
pub fn arguments_without_help(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name()).trim().to_string();
        for arg in cmd.get_arguments() {
            // clap's own --help and --version, not arguments of ours (a positional may be
            // called `version`: the action tells them apart, not the name).
            let generated = matches!(
                arg.get_action(),
                clap::ArgAction::Help
                    | clap::ArgAction::HelpShort
                    | clap::ArgAction::HelpLong
                    | clap::ArgAction::Version
            );
            if arg.get_help().is_none() && arg.get_long_help().is_none() && !generated {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(cmd, "", &mut missing);
    missing
}

impl Command {
    /// Whether the command may create the device root: only `install`, `update` and
    /// `enroll` (provisioning, before the first install) do;
    /// `check`, `status` and `rollback` on a root that does not exist say so.
    pub fn creates_root(&self) -> bool {
        matches!(
            self,
            Command::Install { .. } | Command::Update { .. } | Command::Enroll { .. }
        )
    }
}

impl Cli {
    /// Refuses a command that does not install (`check`, `status`, `rollback`) on a device
    /// root that does not exist, naming it, before anything is created there.
    pub fn check_root(&self, settings: &Settings) -> Result<()> {
        match &settings.root {
            Some(root) if !self.command.creates_root() && !root.is_dir() => Err(Error::Device {
                root: root.clone(),
                what: "does not exist (only install and update create a device root)".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The settings the flags name, over those of `--config` when given.
    pub fn settings(&self) -> Result<Settings> {
        let file = match &self.config {
            Some(p) => settings_file(p)?,
            None => Settings::default(),
        };
        Ok(file.merge(Settings {
            root: self.root.clone(),
            server: self.server.clone(),
            folder: self.folder.clone(),
            objects_url: self.objects_url.clone(),
            product: self.product.clone(),
            channel: self.channel.clone(),
            trust: self.trust.clone(),
            device_id: self.device_id.clone(),
            pin: self.pin.clone(),
            ca_cert: self.ca_cert.clone(),
            update_deadline_secs: self.update_deadline_secs,
            max_rate: self.max_rate,
            hooks: self.hooks.clone(),
            hook_timeout_secs: None,
            keep_versions: self.keep_versions,
            prefer: self.prefer,
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_of_every_command_has_help() {
        let cmd = super::Cli::command();
        assert_eq!(cmd.get_name(), "deltaroot-agent");
        let missing = super::arguments_without_help(&cmd);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        let bare = cmd.mut_subcommand("install", |c| {
            c.mut_arg("version", |a| a.help(None::<&str>).long_help(None::<&str>))
        });
        let found = super::arguments_without_help(&bare);
        assert_eq!(found, ["deltaroot-agent install version"]);
    }

    #[test]
    fn completions_name_the_commands_and_man_pages_their_options() {
        let mut script = Vec::new();
        super::completions(clap_complete::Shell::Bash, &mut script);
        let script = String::from_utf8(script).unwrap();
        for sub in ["install", "check", "update", "status", "rollback"] {
            assert!(script.contains(sub), "{sub} missing from:\n{script}");
        }
        let dir = tempfile::tempdir().unwrap();
        super::man_pages(dir.path()).unwrap();
        let top = std::fs::read_to_string(dir.path().join("deltaroot-agent.1")).unwrap();
        assert!(top.contains("trust") && top.contains("product"), "{top}");
        assert!(dir.path().join("deltaroot-agent-install.1").is_file());
    }
}
