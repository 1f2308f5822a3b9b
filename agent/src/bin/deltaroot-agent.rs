//! `deltaroot-agent`: keeps a device's image tree up to date. The command line is
//! `deltaroot_agent::Cli`; the work is `deltaroot_client::agent`.

use anyhow::Context;
use clap::Parser;
use deltaroot_agent::{Cli, Command};
use deltaroot_client::agent::{Agent, Show};

fn main() -> anyhow::Result<()> {
    // The agent's own steps (info) unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            deltaroot_agent::completions(*shell, &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { out } => {
            return deltaroot_agent::man_pages(out)
                .with_context(|| format!("writing man pages into {}", out.display()));
        }
        _ => {}
    }
    let settings = cli.settings().context("reading the settings")?;
    cli.check_root(&settings)?;
    let agent = Agent::new(settings).context("configuring the agent")?;
    let show = |v: &dyn Show| {
        if cli.json {
            println!("{}", v.json())
        } else {
            println!("{}", v.text())
        }
    };
    match &cli.command {
        Command::Install { version } => show(
            &agent
                .install(version)
                .with_context(|| format!("installing {version}"))?,
        ),
        Command::Check => show(&agent.check().context("checking for updates")?),
        Command::Update {
            download_only,
            apply_staged,
        } => show(
            &match (download_only, apply_staged) {
                (true, _) => agent.download_update(),
                (_, true) => agent.apply_staged(),
                _ => agent.update(),
            }
            .context("updating")?,
        ),
        Command::Enroll { token } => show(&agent.enroll(token).context("enrolling the device")?),
        Command::Status => show(&agent.status().context("reading status")?),
        Command::Rollback => {
            let v = agent.rollback().context("rolling back")?;
            println!("rolled back: current is now {v}");
        }
        Command::MarkGood {
            checks,
            check_timeout_secs,
        } => {
            if let Some(dir) = checks {
                let limit = std::time::Duration::from_secs(*check_timeout_secs);
                deltaroot_client::health::run_checks(dir, limit)
                    .context("not marked good: a health check failed")?;
            }
            show(&agent.mark_good().context("marking good")?)
        }
        Command::BootCheck { boot_attempts } => show(
            &agent
                .boot_check(*boot_attempts)
                .context("checking the boot")?,
        ),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("answered above"),
    }
    Ok(())
}
