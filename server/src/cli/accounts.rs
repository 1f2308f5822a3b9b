//! `deltaroot-server token …` and `user …`: who may call the API and log in to the dashboard.
//! They work on the server's own state (the database of `--data` or `--database`), like
//! `serve`, so the first admin and the first token exist before anything is reachable.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use deltaroot_format::Name;

use super::{when, Storage};
use crate::access::{self, Rights, Role, Scope};
use crate::App;

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Create an upload token and print it (it is stored only as a hash).
    ///
    /// Without --scope the token may do everything every token could before scopes existed:
    /// read, publish and operate, on every product.
    Create {
        /// The token's name, which the audit log records.
        name: String,
        /// What the token may do: read (releases, channels, devices, audit log), publish
        /// (uploads and releases; includes read), operate (promote, pause, resume, roll
        /// back, set a rollout's share; includes read), enroll (devices' keys, with
        /// `deltaroot-agent enroll`: for provisioning; nothing else). Repeat for several.
        #[arg(long, value_parser = parse_scope)]
        scope: Vec<Scope>,
        /// Hold the token to this product (repeat for several; default: every product).
        #[arg(long)]
        product: Vec<Name>,
        #[command(flatten)]
        storage: Storage,
    },
    /// List tokens: name, scopes, products, creation time (never the tokens themselves).
    List {
        #[command(flatten)]
        storage: Storage,
        /// Print JSON instead of lines for people.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: its holder is refused from the next request on.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        storage: Storage,
    },
}

#[derive(Subcommand)]
pub(super) enum UserCommand {
    /// Add a dashboard user; the password is read from --password-file or from stdin (one
    /// line, at least 12 characters) and stored as an argon2id hash.
    Add {
        /// The user's login name.
        name: Name,
        /// viewer (reads everything), operator (also promotes, pauses, resumes and rolls
        /// back) or admin (also manages users and tokens).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A file whose first line is the password (default: read stdin).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        storage: Storage,
    },
    /// List users and their roles.
    List {
        #[command(flatten)]
        storage: Storage,
        /// Print JSON instead of lines for people.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user.
    Remove {
        /// The user's login name.
        name: Name,
        #[command(flatten)]
        storage: Storage,
    },
    /// Set a user's password (from --password-file or stdin), and role with --role.
    Passwd {
        /// The user's login name.
        name: Name,
        /// A new role as well.
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// A file whose first line is the password (default: read stdin).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        storage: Storage,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    access::token_scope(s).map_err(|e| e.to_string())
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: crate::error::Error| e.to_string())
}

async fn open(storage: &Storage) -> anyhow::Result<App> {
    App::start(&storage.offline())
        .await
        .with_context(|| format!("opening {}", storage.data.display()))
}

/// The password of `user add` / `user passwd`: the first line of `file`, or of stdin.
fn read_password(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let (text, from) = match file {
        Some(f) => (
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            f.display().to_string(),
        ),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the password from stdin")?;
            (s, "stdin".to_string())
        }
    };
    Ok(access::password_from(&text, &from)?)
}

/// Who the audit log names for a change made with these commands: `cli:` and the
/// operating-system account that ran it (the commands act on the server's state directly,
/// with no token or session to name).
fn who() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("cli:{user}")
}

/// Writes the audit line of an account change (under no product, as the dashboard's admin
/// pages do).
async fn audited(app: &crate::App, action: &str, detail: serde_json::Value) -> anyhow::Result<()> {
    app.db
        .audit_accounts(&who(), action, detail)
        .await
        .with_context(|| format!("writing the audit line of {action}"))
}

async fn hash(password: String) -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(move || access::hash_password(&password)).await??)
}

pub(super) async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            scope,
            product,
            storage,
        } => {
            let app = open(&storage).await?;
            let token = crate::new_token();
            let scopes = Rights::scopes_text(&scope);
            let products = Rights::products_text(&product);
            app.db
                .create_token(&name, &token, &scopes, products.as_deref())
                .await?;
            audited(
                &app,
                "token-create",
                serde_json::json!({"token": name, "scopes": scopes, "products": products}),
            )
            .await?;
            println!("{token}");
        }
        TokenCommand::List { storage, json } => {
            let app = open(&storage).await?;
            let tokens = app.db.tokens().await?;
            super::print(json, &tokens, |ts| {
                if ts.is_empty() {
                    return "no tokens: create one with `deltaroot-server token create NAME`"
                        .into();
                }
                ts.iter()
                    .map(|t| {
                        format!(
                            "{}\tscopes {}\tproducts {}\tcreated {}",
                            t.name,
                            t.scopes,
                            t.products.as_deref().unwrap_or("all"),
                            when(t.created_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        TokenCommand::Revoke { name, storage } => {
            let app = open(&storage).await?;
            if !app.db.revoke_token(&name).await? {
                anyhow::bail!(
                    "no token is named {name:?}: `deltaroot-server token list` shows them"
                );
            }
            audited(&app, "token-revoke", serde_json::json!({"token": name})).await?;
            println!("revoked token {name:?}");
        }
    }
    Ok(())
}

pub(super) async fn user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            role,
            password_file,
            storage,
        } => {
            let password = read_password(password_file.as_ref())?;
            let app = open(&storage).await?;
            app.db.add_user(&name, role, &hash(password).await?).await?;
            audited(
                &app,
                "user-add",
                serde_json::json!({"user": name, "role": role}),
            )
            .await?;
            println!("added user {name} ({role})");
        }
        UserCommand::List { storage, json } => {
            let app = open(&storage).await?;
            let users = app.db.users().await?;
            super::print(json, &users, |us| {
                if us.is_empty() {
                    return "no users: add the first admin with \
                            `deltaroot-server user add NAME --role admin`"
                        .into();
                }
                us.iter()
                    .map(|u| {
                        format!(
                            "{}\t{}\tcreated {}\tchanged {}",
                            u.name,
                            u.role,
                            when(u.created_at),
                            when(u.updated_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        UserCommand::Remove { name, storage } => {
            let app = open(&storage).await?;
            if !app.db.remove_user(&name).await? {
                anyhow::bail!("no user is named {name}: `deltaroot-server user list` shows them");
            }
            audited(&app, "user-remove", serde_json::json!({"user": name})).await?;
            println!("removed user {name}");
        }
        UserCommand::Passwd {
            name,
            role,
            password_file,
            storage,
        } => {
            let password = read_password(password_file.as_ref())?;
            let app = open(&storage).await?;
            if !app
                .db
                .update_user(&name, Some(&hash(password).await?), role)
                .await?
            {
                anyhow::bail!("no user is named {name}: `deltaroot-server user list` shows them");
            }
            audited(
                &app,
                "user-passwd",
                serde_json::json!({"user": name, "role": role}),
            )
            .await?;
            println!("changed the password of user {name}");
        }
    }
    Ok(())
}
