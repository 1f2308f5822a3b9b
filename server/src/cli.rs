//! The `deltaroot-server` command line. `main.rs` only calls [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::App;

#[derive(Parser)]
#[command(
    version,
    about = "Stores deltaroot releases and serves them to devices"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, manifests, objects and deltas.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Folder with the SQLite database and the object store.
        #[arg(long)]
        data: PathBuf,
        /// Largest upload, in MiB.
        #[arg(long, default_value_t = 4096)]
        max_upload_mib: usize,
    },
    /// Manage upload tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an upload token and print it (it is stored only as a hash).
    Create {
        name: String,
        #[arg(long)]
        data: PathBuf,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            max_upload_mib,
        } => {
            let app = App::open(&data, max_upload_mib << 20)
                .await
                .with_context(|| format!("opening {}", data.display()))?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, data = %data.display(), "serving");
            crate::serve(listener, app, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        }
        Command::Token {
            command: TokenCommand::Create { name, data },
        } => {
            let app = App::open(&data, 0)
                .await
                .with_context(|| format!("opening {}", data.display()))?;
            let token = crate::new_token();
            app.db.create_token(&name, &token).await?;
            println!("{token}");
        }
    }
    Ok(())
}
