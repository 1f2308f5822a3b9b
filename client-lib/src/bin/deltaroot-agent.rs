//! `deltaroot-agent`: the device side. All logic lives in `deltaroot_client::agent`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deltaroot_client::agent::{Agent, Settings, Show};

#[derive(Parser)]
#[command(
    version,
    about = "Keeps a device's image tree up to date from a deltaroot server"
)]
struct Cli {
    /// TOML file with the settings below; flags override it.
    #[arg(long, env = "DELTAROOT_CONFIG")]
    config: Option<PathBuf>,
    /// Device root holding deployments/, current and previous.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Server base URL.
    #[arg(long)]
    server: Option<String>,
    /// Base URL for objects and deltas, when a mirror serves them.
    #[arg(long)]
    objects_url: Option<String>,
    #[arg(long)]
    product: Option<String>,
    /// Channel to follow (default stable).
    #[arg(long)]
    channel: Option<String>,
    /// Trusted publisher public key file; repeat for several.
    #[arg(long)]
    trust: Vec<PathBuf>,
    /// This device's id in checks (default: /etc/machine-id, else one generated into
    /// <root>/state/device-id).
    #[arg(long)]
    device_id: Option<String>,
    /// Follow this exact version instead of the channel.
    #[arg(long)]
    pin: Option<String>,
    /// PEM certificate of a private certificate authority for the server's HTTPS.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install exactly this version (also to downgrade on purpose).
    Install { version: String },
    /// Ask the server whether an update is available and what it costs.
    Check,
    /// Move to the newest release on the channel.
    Update,
    /// Show the running and previous versions and the last result.
    Status,
    /// Switch back to the previous version.
    Rollback,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => Settings::from_file(p).with_context(|| format!("reading {}", p.display()))?,
        None => Settings::default(),
    };
    let flags = Settings {
        root: cli.root,
        server: cli.server,
        objects_url: cli.objects_url,
        product: cli.product,
        channel: cli.channel,
        trust: cli.trust,
        device_id: cli.device_id,
        pin: cli.pin,
        ca_cert: cli.ca_cert,
    };
    let agent = Agent::new(file.merge(flags)).context("configuring the agent")?;
    let show = |v: &dyn Show| {
        if cli.json {
            println!("{}", v.json())
        } else {
            println!("{}", v.text())
        }
    };
    match cli.command {
        Command::Install { version } => show(
            &agent
                .install(&version)
                .with_context(|| format!("installing {version}"))?,
        ),
        Command::Check => show(&agent.check().context("checking for updates")?),
        Command::Update => show(&agent.update().context("updating")?),
        Command::Status => show(&agent.status().context("reading status")?),
        Command::Rollback => {
            let v = agent.rollback().context("rolling back")?;
            println!("rolled back: current is now {v}");
        }
    }
    Ok(())
}
