//! `deltaroot`: the release engineer's command. All logic lives in the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    deltaroot_publisher::cli::run(deltaroot_publisher::cli::Cli::parse())
}
