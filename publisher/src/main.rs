//! `deltaroot`: the release engineer's command. All logic lives in the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Logs are filtered by RUST_LOG; without it only errors would show, and deltaroot reports
    // its errors itself, so the subscriber is set up only when RUST_LOG asks for logs.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    Ok(deltaroot_publisher::cli::run(
        deltaroot_publisher::cli::Cli::parse(),
    )?)
}
