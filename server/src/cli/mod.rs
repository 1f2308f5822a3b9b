//! The `deltaroot-server` command line. `main.rs` only calls [`run`].
//!
//! `serve`, `gc`, `token …` and `user …` ([`accounts`]) work on the server's own state; the
//! operator commands (`releases`, `channels`, `status`, `promote`, `pause`, `resume`,
//! `rollback`, `rollout`, `audit`, `devices`, `device`) talk to a running server over its API,
//! and `health` asks one whether it is up (a container's health check).

mod accounts;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use deltaroot_format::api::{PromoteRequest, RolloutRequest};
use deltaroot_format::{Name, SecretKey};

use crate::client::{show_channel, show_device, when, Client};
use crate::{App, Config};
use accounts::{TokenCommand, UserCommand};

#[derive(Parser)]
#[command(
    name = "deltaroot-server",
    version,
    about = "Stores deltaroot releases, serves them to devices, and steers the fleet"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the server keeps its state.
#[derive(Args)]
struct Storage {
    /// Folder for the default SQLite database and object folder.
    #[arg(long)]
    data: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASS@HOST/DB` (default: SQLite in --data).
    #[arg(long, env = "DELTAROOT_DATABASE")]
    database: Option<String>,
    /// `s3://BUCKET/PREFIX` (endpoint and credentials from AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, …) or a folder (default: --data/store).
    #[arg(long, env = "DELTAROOT_OBJECTS")]
    objects: Option<String>,
}

impl Storage {
    /// For a command that works on the state and exits: no background tasks.
    fn offline(&self) -> Config {
        Config {
            watch_every: None,
            housekeeping_every: None,
            ..self.config()
        }
    }

    fn config(&self) -> Config {
        Config {
            database: self.database.clone(),
            objects: self.objects.clone(),
            s3: crate::store::S3Options::from_env(),
            ..Config::in_folder(&self.data)
        }
    }
}

/// How to reach a running server.
#[derive(Args)]
struct Remote {
    /// The server's base URL (required, except by `rollback --out`).
    #[arg(long, env = "DELTAROOT_SERVER")]
    server: Option<String>,
    /// An operator (upload) token.
    #[arg(long, env = "DELTAROOT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate of a private certificate authority the server's certificate is
    /// signed by.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// The product to act on.
    #[arg(long)]
    product: String,
    /// Print JSON instead of lines for people.
    #[arg(long)]
    json: bool,
}

impl Remote {
    fn client(&self) -> anyhow::Result<Client> {
        let server = self.server.as_deref().ok_or_else(|| {
            anyhow::anyhow!("the server's URL is needed: give --server or set DELTAROOT_SERVER")
        })?;
        Ok(Client::new(
            server,
            self.token.as_deref(),
            self.ca_cert.as_deref(),
        )?)
    }
}

/// How a rollout goes on after its first share: `promote` sets it, `rollout` changes it.
#[derive(Args, Clone, Debug, Default)]
pub struct Waves {
    /// Raise the share by this much every --step-secs (for `rollout`: counted from now).
    #[arg(long)]
    pub step_percent: Option<f64>,
    /// Seconds between two raises of the share by --step-percent.
    #[arg(long)]
    pub step_secs: Option<u64>,
    /// Stop when more than this share (0-1) of reporting devices failed or rolled back.
    #[arg(long)]
    pub max_failure_rate: Option<f64>,
    /// ...once at least this many devices reported.
    #[arg(long)]
    pub min_reports: Option<u64>,
    /// Pace the rollout by egress too: admit devices while the downloads their plans name
    /// stay within this much per clock hour (e.g. 50G); for `rollout`, 0 removes the budget.
    #[arg(long, value_name = "SIZE", value_parser = deltaroot_format::parse_bytes)]
    pub max_bytes_per_hour: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, manifests, objects and deltas.
    Serve {
        /// Address and port to listen on (HTTPS, or HTTP with --plain-http).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[command(flatten)]
        storage: Storage,
        /// PEM certificate chain for HTTPS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for HTTPS.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP instead of HTTPS (behind a proxy, or for tests).
        #[arg(long, conflicts_with = "tls_cert")]
        plain_http: bool,
        /// A proxy (its address, as the server sees it) whose X-Forwarded-For names the
        /// client, for the dashboard's failed sign-in limit per address (repeat for
        /// several; default: none, the socket's peer is the client).
        #[arg(long, value_name = "ADDR")]
        trust_forwarded_for: Vec<std::net::IpAddr>,
        /// Largest upload, in MiB (streamed to --data/uploads, never held in memory).
        #[arg(long, default_value_t = 2048)]
        max_upload_mib: usize,
        /// Longest time for a TLS handshake and for each HTTP/1 request head (also the
        /// longest wait for the next request on a kept-alive connection), in seconds.
        #[arg(long, default_value_t = 30)]
        header_timeout_secs: u64,
        /// A connection with nothing read or written for this long while none of its
        /// requests is being answered is closed, and a request body stalled this long is
        /// refused, in seconds.
        #[arg(long, default_value_t = 120)]
        idle_timeout_secs: u64,
        /// Delta builds (release pairs the publisher did not diff) running at once.
        #[arg(long, default_value_t = 1)]
        max_builds: usize,
        /// Release pairs waiting for or in a delta build; past this a pair is not queued
        /// until a later plan request.
        #[arg(long, default_value_t = 64)]
        build_queue: usize,
        /// How often devices should poll, in seconds (answers spread it by --poll-jitter).
        #[arg(long, default_value_t = 3600)]
        poll_secs: u64,
        /// Share of --poll-secs by which each answer's poll interval is spread at random
        /// (0.2: 2,880 to 4,320 s for 3,600), so that devices do not all poll together.
        #[arg(long, default_value_t = 0.2)]
        poll_jitter: f64,
        /// How long a device may act on a signed answer to its check, in seconds: an answer
        /// a network replays later than this is refused (as is one older than the newest a
        /// device took). At least 60; allow for the error of devices' clocks.
        #[arg(long, default_value_t = 86400, value_parser = clap::value_parser!(u64).range(60..))]
        answer_ttl: u64,
        /// How long a replica answers checks from cached channel state, in milliseconds (once
        /// expired, for up to as long again while one check reads the state anew).
        #[arg(long, default_value_t = 1000)]
        cache_ms: u64,
        /// Most products, channels and plan sizes each in-memory cache holds.
        #[arg(long, default_value_t = crate::fleet::CACHE_CAPACITY)]
        cache_capacity: u64,
        /// Forget devices whose last check-in is older than this many days (0: keep them for
        /// ever). Checked every hour.
        #[arg(long, value_name = "DAYS", default_value_t = 90)]
        device_retention_days: u64,
        /// Every hour, remove stored files no release references once they are this old
        /// (uploads of publishes that never completed; 0: only `deltaroot-server gc`).
        #[arg(long, value_name = "H", default_value_t = 24)]
        orphan_grace_hours: u64,
        /// How often failure rates of rollouts are checked, in seconds.
        #[arg(long, default_value_t = 5)]
        watch_secs: u64,
        /// Longest wait for requests in flight (downloads) at shutdown, in seconds.
        #[arg(long, default_value_t = 300)]
        grace_secs: u64,
        /// zstd level of the deltas the server builds for release pairs the publisher did
        /// not diff (a device several versions behind).
        #[arg(long, default_value_t = 19)]
        delta_level: i32,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Logs on stderr as text lines or one JSON object per line.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Remove stored objects, deltas and packs that no release, plan or pack references and
    /// that are older than the grace period (uploads of publishes that never completed).
    Gc {
        #[command(flatten)]
        storage: Storage,
        /// Only files uploaded at least this long ago are removed.
        #[arg(long, value_name = "H", default_value_t = 24)]
        orphan_grace_hours: u64,
        /// List what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Back up while the server runs: a consistent snapshot of the database (SQLite's
    /// VACUUM INTO, or pg_dump for PostgreSQL), then every stored file of the object folder
    /// or bucket (files already in OUT are kept).
    Backup {
        #[command(flatten)]
        storage: Storage,
        /// The backup folder (made if missing; a second backup into it copies only new files).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Restore a backup folder into an empty data folder or PostgreSQL database (never
    /// over a database), and the object folder or bucket `--objects` names.
    Restore {
        /// The backup folder (`backup --out`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Where to restore to: then `serve` with the same --data, --database, --objects.
        #[command(flatten)]
        storage: Storage,
    },
    /// Manage API tokens: create (with scopes and products), list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage dashboard users: add, list, remove, passwd.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// List a product's releases, newest first.
    Releases {
        #[command(flatten)]
        remote: Remote,
    },
    /// List a product's channels with their rollouts.
    Channels {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one channel and its rollout (share, failures, state).
    Status {
        #[command(flatten)]
        remote: Remote,
        /// The channel to act on.
        #[arg(long, default_value = "stable")]
        channel: String,
    },
    /// Point a channel at a release, at once or in waves.
    Promote {
        #[command(flatten)]
        remote: Remote,
        /// The channel to act on.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The release to point the channel at.
        version: Name,
        /// Share of devices offered the release at first (0-100).
        #[arg(long)]
        percent: Option<f64>,
        /// A release every older device must install first.
        #[arg(long)]
        floor: Option<Name>,
        /// Count only the reports of enrolled devices, signed with their keys, for
        /// --max-failure-rate (`deltaroot-agent enroll`): forged reports stop nothing.
        #[arg(long)]
        signed_reports_only: bool,
        #[command(flatten)]
        waves: Waves,
    },
    /// Stop offering updates on a channel.
    Pause {
        #[command(flatten)]
        remote: Remote,
        /// The channel to act on.
        #[arg(long, default_value = "stable")]
        channel: String,
    },
    /// Offer updates on a paused channel again.
    Resume {
        #[command(flatten)]
        remote: Remote,
        /// The channel to act on.
        #[arg(long, default_value = "stable")]
        channel: String,
    },
    /// Roll a channel back to an older release: signs a downgrade statement with the
    /// product's release key, so devices accept the older version. With --out, only writes
    /// the signed statement to a file (no server needed), for the channels page of the
    /// dashboard.
    Rollback {
        #[command(flatten)]
        remote: Remote,
        /// The channel to act on.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The older release to roll the channel back to.
        version: String,
        /// The release key file (`deltaroot keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Write the signed statement (JSON) to this file instead of sending it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Change a channel's rollout after it started: its share, steps, failure limit or
    /// egress budget. A new share or new steps restart a stopped rollout.
    #[command(arg_required_else_help = true)]
    Rollout {
        #[command(flatten)]
        remote: Remote,
        /// The channel to act on.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Share of devices offered the rollout's release now (0-100).
        percent: Option<f64>,
        #[command(flatten)]
        waves: Waves,
    },
    /// Show the audit log: who changed what, when.
    Audit {
        #[command(flatten)]
        remote: Remote,
    },
    /// List a product's devices: version, last report, last check-in.
    Devices {
        #[command(flatten)]
        remote: Remote,
        /// Only devices whose last report is this: ok, failed or rolled-back.
        #[arg(long, value_name = "RESULT")]
        result: Option<String>,
    },
    /// Print the completion script for SHELL to stdout.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages into DIR: deltaroot-server.1 and one per command.
    Man {
        /// The folder to write the pages into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check a running server's health: GET --url once; exit 0 when it answers 200 OK, 1
    /// with the reason otherwise (a container's HEALTHCHECK, where there is no shell or curl).
    Health {
        /// The URL to GET (`https://…` with --ca-cert for a server on a private CA).
        #[arg(
            long,
            env = "DELTAROOT_HEALTH_URL",
            default_value = "http://127.0.0.1:8080/healthz"
        )]
        url: String,
        /// PEM certificate of a private certificate authority the server's certificate is
        /// signed by.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Longest wait for the answer, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Show a device's last check-in.
    Device {
        #[command(flatten)]
        remote: Remote,
        /// The device's id (its /etc/machine-id or the id it generated).
        id: String,
    },
}

/// Logs to stderr, as text or one JSON object per line.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn,sqlx=warn".into());
    // Colour only on a terminal: a log file or the journal gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
}

/// Parses the command line and runs it on a runtime of the right size.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "deltaroot-server", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(out).with_context(|| format!("making {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            return Ok(());
        }
        _ => {}
    }
    let threads = match &cli.command {
        Command::Serve { threads, .. } => *threads,
        _ => Some(1),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(run(cli))
}

fn print<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).expect("serialises"));
    } else {
        println!("{}", text(v));
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            storage,
            tls_cert,
            tls_key,
            plain_http,
            trust_forwarded_for,
            max_upload_mib,
            header_timeout_secs,
            idle_timeout_secs,
            max_builds,
            build_queue,
            poll_secs,
            poll_jitter,
            answer_ttl,
            cache_ms,
            cache_capacity,
            device_retention_days,
            orphan_grace_hours,
            watch_secs,
            grace_secs,
            delta_level,
            threads: _,
            log_format,
        } => {
            init_logging(log_format);
            let tls = match (&tls_cert, &tls_key) {
                (Some(c), Some(k)) => Some(crate::tls_config(c, k)?),
                _ if plain_http => None,
                _ => anyhow::bail!(
                    "HTTPS needs --tls-cert and --tls-key; pass --plain-http to serve plain HTTP"
                ),
            };
            let config = Config {
                max_upload: max_upload_mib << 20,
                header_timeout: Duration::from_secs(header_timeout_secs.max(1)),
                idle_timeout: Duration::from_secs(idle_timeout_secs.max(1)),
                max_builds: max_builds.max(1),
                build_queue: build_queue.max(1),
                cache_ttl: Duration::from_millis(cache_ms),
                cache_capacity: cache_capacity.max(1),
                device_retention: (device_retention_days > 0)
                    .then(|| Duration::from_secs(device_retention_days.saturating_mul(86400))),
                orphan_grace: (orphan_grace_hours > 0)
                    .then(|| Duration::from_secs(orphan_grace_hours.saturating_mul(3600))),
                poll: crate::fleet::PollSettings {
                    secs: poll_secs.max(1),
                    jitter: poll_jitter,
                },
                watch_every: Some(Duration::from_secs(watch_secs.max(1))),
                delta_level,
                secure_cookies: !plain_http,
                trusted_proxies: trust_forwarded_for,
                answer_ttl: Duration::from_secs(answer_ttl),
                ..storage.config()
            };
            let app = App::start(&config).await.with_context(|| {
                format!("opening the server's state ({})", storage.data.display())
            })?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            tracing::info!(
                addr = %listener.local_addr()?,
                https = tls.is_some(),
                database = app.db.url(),
                objects = app.store.url(),
                "serving"
            );
            crate::serve_with(
                listener,
                app,
                tls,
                Duration::from_secs(grace_secs),
                shutdown_signal(),
            )
            .await?;
            tracing::info!("stopped");
        }
        Command::Backup { storage, out } => {
            init_logging(LogFormat::Text);
            let app = App::start(&storage.offline())
                .await
                .with_context(|| format!("opening {}", storage.data.display()))?;
            let c = crate::backup::backup(&app.db, &app.store, &out)
                .await
                .with_context(|| format!("backing up into {}", out.display()))?;
            println!(
                "backed up the database and {} stored files ({} bytes; {} were there already) into {}",
                c.files,
                c.bytes,
                c.kept,
                out.display()
            );
        }
        Command::Restore { from, storage } => {
            init_logging(LogFormat::Text);
            let data = storage.data.display();
            let c = crate::backup::restore(&from, &storage.config())
                .await
                .with_context(|| format!("restoring {} into {data}", from.display()))?;
            println!(
                "restored the database and {} stored files ({} bytes; {} were there already) \
                 into {data}: serve it with the same --data, --database and --objects",
                c.files, c.bytes, c.kept,
            );
        }
        Command::Gc {
            storage,
            orphan_grace_hours,
            dry_run,
        } => {
            init_logging(LogFormat::Text);
            let app = App::start(&storage.offline())
                .await
                .with_context(|| format!("opening {}", storage.data.display()))?;
            let grace = Duration::from_secs(orphan_grace_hours.saturating_mul(3600));
            let s = crate::gc::sweep(&app.db, &app.store, grace, dry_run).await?;
            for rel in &s.removed {
                println!(
                    "{}{rel}",
                    if dry_run { "would remove " } else { "removed " }
                );
            }
            println!(
                "{} {} orphan files; kept {} referenced and {} younger than {orphan_grace_hours} h",
                if dry_run { "would remove" } else { "removed" },
                s.removed.len(),
                s.referenced,
                s.young
            );
        }
        Command::Token { command } => {
            init_logging(LogFormat::Text);
            accounts::token(command).await?;
        }
        Command::User { command } => {
            init_logging(LogFormat::Text);
            accounts::user(command).await?;
        }
        Command::Releases { remote } => {
            let rs = remote.client()?.releases(&remote.product).await?;
            print(remote.json, &rs, |rs| {
                rs.iter()
                    .map(|r| {
                        let mut line = format!(
                            "{}\tcreated {}\t{} entries\t{}\tby {}",
                            r.version,
                            when(r.created),
                            r.entries,
                            deltaroot_format::units::human_bytes(r.image_bytes.max(0) as u64),
                            r.published_by
                        );
                        if !r.skip_methods.is_empty() {
                            let names: Vec<&str> =
                                r.skip_methods.iter().map(|m| m.name()).collect();
                            line.push_str(&format!("\tno {} deltas", names.join("/")));
                        }
                        line
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Channels { remote } => {
            let cs = remote.client()?.channels(&remote.product).await?;
            print(remote.json, &cs, |cs| {
                cs.iter().map(show_channel).collect::<Vec<_>>().join("\n")
            });
        }
        Command::Status { remote, channel } => {
            let c = remote.client()?.channel(&remote.product, &channel).await?;
            print(remote.json, &c, show_channel);
        }
        Command::Promote {
            remote,
            channel,
            version,
            percent,
            floor,
            signed_reports_only,
            waves: w,
        } => {
            let req = PromoteRequest {
                version,
                percent,
                step_percent: w.step_percent,
                step_secs: w.step_secs,
                floor,
                max_failure_rate: w.max_failure_rate,
                min_reports: w.min_reports,
                max_bytes_per_hour: w.max_bytes_per_hour,
                signed_reports_only,
            };
            let c = remote
                .client()?
                .promote(&remote.product, &channel, &req)
                .await?;
            print(remote.json, &c, show_channel);
        }
        Command::Pause { remote, channel } => {
            let c = remote.client()?.pause(&remote.product, &channel).await?;
            print(remote.json, &c, show_channel);
        }
        Command::Resume { remote, channel } => {
            let c = remote.client()?.resume(&remote.product, &channel).await?;
            print(remote.json, &c, show_channel);
        }
        Command::Rollback {
            remote,
            channel,
            version,
            key,
            out,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let key = SecretKey::from_text(&text)
                .with_context(|| format!("reading {}", key.display()))?;
            if let Some(out) = out {
                let req =
                    crate::client::rollback_request(&remote.product, &channel, &version, &key);
                let json = serde_json::to_string_pretty(&req)? + "\n";
                std::fs::write(&out, json).with_context(|| format!("writing {}", out.display()))?;
                println!(
                    "wrote a downgrade statement of {}/{channel} to {version} in {}: paste it \
                     on the channels page of the dashboard",
                    remote.product,
                    out.display()
                );
                return Ok(());
            }
            let c = remote
                .client()?
                .rollback(&remote.product, &channel, &version, &key)
                .await?;
            print(remote.json, &c, show_channel);
        }
        Command::Rollout {
            remote,
            channel,
            percent,
            waves: w,
        } => {
            let req = RolloutRequest {
                percent,
                step_percent: w.step_percent,
                step_secs: w.step_secs,
                max_failure_rate: w.max_failure_rate,
                min_reports: w.min_reports,
                max_bytes_per_hour: w.max_bytes_per_hour,
            };
            let c = remote
                .client()?
                .rollout(&remote.product, &channel, &req)
                .await?;
            print(remote.json, &c, show_channel);
        }
        Command::Audit { remote } => {
            let a = remote.client()?.audit(&remote.product).await?;
            print(remote.json, &a, |a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}",
                            when(e.at),
                            e.who,
                            e.channel.as_deref().unwrap_or("-"),
                            e.action,
                            e.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("main answers these without a runtime")
        }
        Command::Health {
            url,
            ca_cert,
            timeout_secs,
        } => {
            let body = crate::client::health(
                &url,
                ca_cert.as_deref(),
                Duration::from_secs(timeout_secs.max(1)),
            )
            .await?;
            println!("{url}: 200 OK {}", body.trim());
        }
        Command::Device { remote, id } => {
            let d = remote.client()?.device(&remote.product, &id).await?;
            print(remote.json, &d, show_device);
        }
        Command::Devices { remote, result } => {
            let ds = remote
                .client()?
                .devices(&remote.product, result.as_deref())
                .await?;
            print(remote.json, &ds, |ds| {
                if ds.is_empty() {
                    return format!("product {} has no devices that checked in", remote.product);
                }
                ds.iter().map(show_device).collect::<Vec<_>>().join("\n")
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_of_every_command_has_help() {
        let cmd = super::Cli::command();
        assert_eq!(cmd.get_name(), "deltaroot-server");
        let missing = deltaroot_agent::arguments_without_help(&cmd);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        // The walk reaches nested commands (`token create`).
        let bare = cmd.clone().mut_subcommand("token", |t| {
            t.mut_subcommand("create", |c| {
                c.mut_arg("name", |a| a.help(None::<&str>).long_help(None::<&str>))
            })
        });
        let found = deltaroot_agent::arguments_without_help(&bare);
        assert_eq!(found, ["deltaroot-server token create name"]);
    }
}
