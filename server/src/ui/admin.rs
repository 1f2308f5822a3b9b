//! The admin pages: users and tokens, for the admin role only (others get 403). They do what
//! `deltaroot-server user …` and `token …` do, through the same database functions and
//! checks; every form carries the session's CSRF token, removing and revoking also a
//! confirmation, and every change is in the audit log as `user:NAME` (under no product).
//!
//! - `GET /ui/admin/users`: name, role, created; forms to add, change a role, remove.
//! - `POST /ui/admin/users` (`name`, `role`, `password` of at least 12 characters);
//!   `POST /ui/admin/users/role` (`name`, `role`); `POST /ui/admin/users/remove` (`name`,
//!   `confirm`): a new role or a removal ends the user's sessions.
//! - `GET /ui/admin/tokens`: name, scopes, products, created (never the token).
//! - `POST /ui/admin/tokens` (`name`, `read`/`publish`/`operate`, `products`): the token is
//!   shown once, on the answer; `POST /ui/admin/tokens/revoke` (`name`, `confirm`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use deltaroot_format::Name;
use serde::Deserialize;
use serde_json::json;

use super::{html, redirect, PageResult as Result, Session, User};
use crate::access::{check_password, hash_password, token_scope, Rights, Role, Scope};
use crate::api::extract::NameQuery;
use crate::client::when;
use crate::error::{blocking, Error};
use crate::App;

/// The session's user must be an admin; for a form, its CSRF token must be the session's.
fn admin(s: &Session, csrf: Option<&str>) -> Result<()> {
    if let Some(c) = csrf {
        s.check_csrf(c)?;
    }
    Ok(s.rights().require(Scope::Admin, None)?)
}

/// Removing and revoking need the form's confirmation box.
fn confirmed(confirm: &str) -> Result<()> {
    if confirm != "yes" {
        return Err(Error::BadRequest("tick the confirmation box to go on".into()).into());
    }
    Ok(())
}

fn field(name: &'static str, value: &str) -> Result<Name> {
    Ok(Name::new(name, value.trim()).map_err(Error::from)?)
}

fn role(value: &str) -> Result<Role> {
    Ok(value.trim().parse::<Role>()?)
}

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

struct UserLine {
    name: String,
    role: String,
    created: String,
    me: bool,
}

#[derive(askama::Template)]
#[template(path = "admin_users.html")]
struct Users {
    user: Option<User>,
    csrf: String,
    users: Vec<UserLine>,
    notice: Option<String>,
    min_password: usize,
}

/// `GET /ui/admin/users`.
pub async fn users(
    State(app): State<App>,
    s: Session,
    NameQuery(q): NameQuery<DoneQuery>,
) -> Result<Response> {
    admin(&s, None)?;
    let users = app
        .db
        .users()
        .await?
        .into_iter()
        .map(|u| UserLine {
            me: u.name == s.user,
            name: u.name,
            role: u.role.to_string(),
            created: when(u.created_at),
        })
        .collect();
    let notice = q.done.map(|d| match d.as_str() {
        "add" => "User added.".to_string(),
        "role" => "Role changed; the user's sessions have ended.".to_string(),
        "remove" => "User removed; their sessions have ended.".to_string(),
        _ => "Done.".to_string(),
    });
    Ok(html(
        StatusCode::OK,
        &Users {
            user: Some((&s).into()),
            csrf: s.csrf.clone(),
            users,
            notice,
            min_password: crate::access::MIN_PASSWORD,
        },
    ))
}

#[derive(Deserialize)]
pub struct AddUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

/// `POST /ui/admin/users`: adds a user, as `user add` does.
pub async fn add_user(
    State(app): State<App>,
    s: Session,
    Form(f): Form<AddUserForm>,
) -> Result<Response> {
    admin(&s, Some(&f.csrf))?;
    let name = field("user", &f.name)?;
    let role = role(&f.role)?;
    check_password(&f.password, "the password")?;
    let password = f.password;
    let hash = blocking("hashing a password", move || hash_password(&password)).await?;
    app.db.add_user(&name, role, &hash).await?;
    app.db
        .audit_accounts(
            &s.who(),
            "user-add",
            json!({"user": name.as_str(), "role": role}),
        )
        .await?;
    tracing::info!(by = %s.user, user = %name, %role, "added a user");
    Ok(redirect("/ui/admin/users?done=add"))
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

/// `POST /ui/admin/users/role`: a new role (the user's sessions end).
pub async fn set_role(
    State(app): State<App>,
    s: Session,
    Form(f): Form<RoleForm>,
) -> Result<Response> {
    admin(&s, Some(&f.csrf))?;
    let role = role(&f.role)?;
    if f.name == s.user && role != Role::Admin {
        return Err(Error::BadRequest(
            "you cannot take the admin role from yourself: another admin must".into(),
        )
        .into());
    }
    if !app.db.update_user(&f.name, None, Some(role)).await? {
        return Err(Error::NotFound(format!("no user is named {:?}", f.name)).into());
    }
    app.db
        .audit_accounts(&s.who(), "user-role", json!({"user": f.name, "role": role}))
        .await?;
    tracing::info!(by = %s.user, user = %f.name, %role, "changed a user's role");
    Ok(redirect("/ui/admin/users?done=role"))
}

#[derive(Deserialize)]
pub struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/admin/users/remove`: removes a user and ends their sessions.
pub async fn remove_user(
    State(app): State<App>,
    s: Session,
    Form(f): Form<RemoveForm>,
) -> Result<Response> {
    admin(&s, Some(&f.csrf))?;
    confirmed(&f.confirm)?;
    if f.name == s.user {
        return Err(
            Error::BadRequest("you cannot remove yourself: another admin must".into()).into(),
        );
    }
    if !app.db.remove_user(&f.name).await? {
        return Err(Error::NotFound(format!("no user is named {:?}", f.name)).into());
    }
    app.db
        .audit_accounts(&s.who(), "user-remove", json!({"user": f.name}))
        .await?;
    tracing::info!(by = %s.user, user = %f.name, "removed a user");
    Ok(redirect("/ui/admin/users?done=remove"))
}

struct TokenLine {
    name: String,
    scopes: String,
    products: String,
    created: String,
}

#[derive(askama::Template)]
#[template(path = "admin_tokens.html")]
struct Tokens {
    user: Option<User>,
    csrf: String,
    tokens: Vec<TokenLine>,
    notice: Option<String>,
    /// A token just created: shown on this answer only.
    created: Option<(String, String)>,
}

async fn tokens_page(
    app: &App,
    s: &Session,
    notice: Option<String>,
    created: Option<(String, String)>,
) -> Result<Response> {
    let tokens = app
        .db
        .tokens()
        .await?
        .into_iter()
        .map(|t| TokenLine {
            name: t.name,
            scopes: t.scopes,
            products: t.products.unwrap_or_else(|| "all".into()),
            created: when(t.created_at),
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Tokens {
            user: Some(s.into()),
            csrf: s.csrf.clone(),
            tokens,
            notice,
            created,
        },
    ))
}

/// `GET /ui/admin/tokens`.
pub async fn tokens(
    State(app): State<App>,
    s: Session,
    NameQuery(q): NameQuery<DoneQuery>,
) -> Result<Response> {
    admin(&s, None)?;
    let notice = q.done.map(|d| match d.as_str() {
        "revoke" => "Token revoked: its holder is refused from now on.".to_string(),
        _ => "Done.".to_string(),
    });
    tokens_page(&app, &s, notice, None).await
}

#[derive(Deserialize)]
pub struct CreateTokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    read: Option<String>,
    #[serde(default)]
    publish: Option<String>,
    #[serde(default)]
    operate: Option<String>,
    /// Product names separated by commas or spaces; empty: every product.
    #[serde(default)]
    products: String,
}

/// `POST /ui/admin/tokens`: creates a token, as `token create` does, and shows it once.
pub async fn create_token(
    State(app): State<App>,
    s: Session,
    Form(f): Form<CreateTokenForm>,
) -> Result<Response> {
    admin(&s, Some(&f.csrf))?;
    let name = field("token", &f.name)?;
    let mut scopes = Vec::new();
    for (ticked, scope) in [
        (&f.read, "read"),
        (&f.publish, "publish"),
        (&f.operate, "operate"),
    ] {
        if ticked.is_some() {
            scopes.push(token_scope(scope)?);
        }
    }
    let products = f
        .products
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| field("product", p))
        .collect::<Result<Vec<Name>>>()?;
    let token = crate::new_token();
    let scopes = Rights::scopes_text(&scopes);
    let products = Rights::products_text(&products);
    app.db
        .create_token(&name, &token, &scopes, products.as_deref())
        .await?;
    app.db
        .audit_accounts(
            &s.who(),
            "token-create",
            json!({"token": name.as_str(), "scopes": scopes, "products": products}),
        )
        .await?;
    tracing::info!(by = %s.user, token = %name, %scopes, "created a token");
    tokens_page(&app, &s, None, Some((name.to_string(), token))).await
}

/// `POST /ui/admin/tokens/revoke`: its holder is refused from the next request on.
pub async fn revoke_token(
    State(app): State<App>,
    s: Session,
    Form(f): Form<RemoveForm>,
) -> Result<Response> {
    admin(&s, Some(&f.csrf))?;
    confirmed(&f.confirm)?;
    if !app.db.revoke_token(&f.name).await? {
        return Err(Error::NotFound(format!("no token is named {:?}", f.name)).into());
    }
    app.db
        .audit_accounts(&s.who(), "token-revoke", json!({"token": f.name}))
        .await?;
    tracing::info!(by = %s.user, token = %f.name, "revoked a token");
    Ok(redirect("/ui/admin/tokens?done=revoke"))
}
