//! A product's channels page and the operator's forms: promote (by share, steps, failure
//! limit and egress budget), change a rollout's waves after it started, pause, resume and
//! roll back. Every form checks the session's CSRF token, then the user's role, and goes
//! through the same functions as the API (`crate::channels`), so the audit log records the
//! user as `user:NAME`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use deltaroot_format::api::{PromoteRequest, RollbackRequest, RolloutRequest, RolloutStatus};
use deltaroot_format::units::{human_bytes, parse_bytes};
use deltaroot_format::Name;
use serde::Deserialize;

use super::{html, redirect, CsrfForm, Session, User};
use super::{PageError, PageResult as Result};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::channels::{
    change_rollout_as, channel_status, product, promote_as, rollback_as, set_paused,
};
use crate::db::stored_name;
use crate::error::Error;
use crate::App;

/// A rollout's settings as its change form shows them.
struct Waves {
    percent: String,
    step_percent: String,
    step_secs: u64,
    max_failure_rate: String,
    max_bytes_per_hour: String,
}

struct ChannelLine {
    name: String,
    version: String,
    paused: bool,
    rollout: String,
    /// The egress budget and what it admitted, for a paced rollout.
    pacing: Option<String>,
    /// For a rollout still going out or stopped: its change form's values.
    waves: Option<Waves>,
}

#[derive(askama::Template)]
#[template(path = "channels.html")]
struct Channels {
    user: Option<User>,
    product: Name,
    channels: Vec<ChannelLine>,
    versions: Vec<String>,
    can_operate: bool,
    role: String,
    csrf: String,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    done: Option<String>,
}

/// A share as a form field shows it: `12.5`, `10`.
fn number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn rollout_line(r: &RolloutStatus) -> String {
    let mut s = format!(
        "Rollout of {}: {}, offered to {:.1} % of devices",
        r.version, r.state, r.percent
    );
    if r.step_percent > 0.0 && r.step_secs > 0 {
        s.push_str(&format!(
            ", +{} % every {} s",
            number(r.step_percent),
            r.step_secs
        ));
    }
    s.push_str(&format!(" ({} reports, {} failures", r.reports, r.failures));
    if let Some(m) = r.max_failure_rate {
        s.push_str(&format!(
            "; stops above {} % after {} reports",
            number(m * 100.0),
            r.min_reports
        ));
    }
    s.push(')');
    if let Some(w) = &r.reason {
        s.push_str(&format!("; {w}"));
    }
    s
}

/// `GET /ui/products/{product}/channels`: each channel, its rollout (with its egress budget),
/// and (for operators) promote, change the waves, pause, resume and roll back.
pub async fn channels(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    NameQuery(q): NameQuery<NoticeQuery>,
) -> Result<Response> {
    let rights = s.rights();
    rights.require(Scope::Read, Some(&product_name))?;
    let p = product(&app, &product_name).await?;
    let mut channels = Vec::new();
    for c in app.db.channel_names(p.id).await? {
        let st = channel_status(&app, &p, &stored_name("channel", c)?).await?;
        let rollout = match &st.rollout {
            Some(r) => rollout_line(r),
            None => match &st.downgrade {
                Some(d) => format!("Rolled back to {d} by a signed downgrade."),
                None => "Every device is offered it.".into(),
            },
        };
        let pacing = st.rollout.as_ref().and_then(|r| {
            r.max_bytes_per_hour.map(|b| {
                format!(
                    "Paced by egress: at most {} an hour; {} charged this hour, {} devices admitted so far.",
                    human_bytes(b),
                    human_bytes(r.egress_bytes_this_hour),
                    r.devices_admitted
                )
            })
        });
        let waves = st
            .rollout
            .as_ref()
            .filter(|r| r.state != "superseded")
            .map(|r| Waves {
                percent: number(r.percent),
                step_percent: number(r.step_percent),
                step_secs: r.step_secs,
                max_failure_rate: r.max_failure_rate.map(number).unwrap_or_default(),
                max_bytes_per_hour: r.max_bytes_per_hour.map(human_bytes).unwrap_or_default(),
            });
        channels.push(ChannelLine {
            name: st.channel.to_string(),
            version: st.version.map(|v| v.to_string()).unwrap_or("-".into()),
            paused: st.paused,
            rollout,
            pacing,
            waves,
        });
    }
    let mut versions: Vec<_> = p.by_version.values().collect();
    versions.sort_by_key(|r| std::cmp::Reverse((r.created, r.id)));
    let notice = q.done.map(|d| match d.as_str() {
        "promote" => "Promoted.".to_string(),
        "rollout" => "The rollout's waves changed.".to_string(),
        "pause" => "Paused.".to_string(),
        "resume" => "Resumed.".to_string(),
        "rollback" => "Rolled back with the signed downgrade statement.".to_string(),
        _ => "Done.".to_string(),
    });
    Ok(html(
        StatusCode::OK,
        &Channels {
            user: Some((&s).into()),
            product: product_name.clone(),
            channels,
            versions: versions.iter().map(|r| r.version.to_string()).collect(),
            can_operate: rights.require(Scope::Operate, Some(&product_name)).is_ok(),
            role: s.role.to_string(),
            csrf: s.csrf.clone(),
            notice,
        },
    ))
}

/// A form's CSRF token must be the session's, then the user must operate the product.
fn may_operate(s: &Session, csrf: &str, product: &Name) -> Result<()> {
    s.check_csrf(csrf)?;
    Ok(s.rights().require(Scope::Operate, Some(product))?)
}

fn back_to_channels(product: &Name, done: &str) -> Response {
    redirect(&format!("/ui/products/{product}/channels?done={done}"))
}

#[derive(Deserialize)]
pub struct PromoteForm {
    #[serde(default)]
    csrf: String,
    channel: Name,
    version: Name,
    percent: f64,
    #[serde(default)]
    step_percent: Option<f64>,
    #[serde(default)]
    step_secs: Option<u64>,
    #[serde(default, deserialize_with = "empty_is_none")]
    max_failure_rate: Option<f64>,
    /// A size as people write it (`50G`); empty: no egress budget.
    #[serde(default)]
    max_bytes_per_hour: String,
}

/// An empty number field is no value.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// The egress budget field: empty is none (0 bytes, which removes a budget).
fn budget_field(v: &str) -> Result<u64> {
    match v.trim() {
        "" => Ok(0),
        v => {
            parse_bytes(v).map_err(|e| PageError(Error::BadRequest(format!("egress budget: {e}"))))
        }
    }
}

/// `POST /ui/products/{product}/promote`.
pub async fn promote(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    Form(f): Form<PromoteForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let req = PromoteRequest {
        version: f.version,
        percent: Some(f.percent),
        step_percent: f.step_percent.filter(|v| *v > 0.0),
        step_secs: f.step_secs.filter(|v| *v > 0),
        floor: None,
        max_failure_rate: f.max_failure_rate,
        min_reports: None,
        max_bytes_per_hour: Some(budget_field(&f.max_bytes_per_hour)?).filter(|b| *b > 0),
        signed_reports_only: false,
    };
    promote_as(&app, &product_name, &f.channel, req, &s.who()).await?;
    Ok(back_to_channels(&product_name, "promote"))
}

#[derive(Deserialize)]
pub struct WavesForm {
    #[serde(default)]
    csrf: String,
    channel: Name,
    percent: f64,
    #[serde(default)]
    step_percent: f64,
    #[serde(default)]
    step_secs: u64,
    #[serde(default, deserialize_with = "empty_is_none")]
    max_failure_rate: Option<f64>,
    #[serde(default)]
    max_bytes_per_hour: String,
}

/// `POST /ui/products/{product}/rollout`: the change form of a channel's rollout. Only the
/// fields that differ from the rollout's settings are changed (and audited).
pub async fn change_rollout(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    Form(f): Form<WavesForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let p = product(&app, &product_name).await?;
    let now = channel_status(&app, &p, &f.channel).await?;
    let Some(r) = now.rollout else {
        return Err(PageError(Error::NotFound(format!(
            "product {product_name} has no rollout on channel {}",
            f.channel
        ))));
    };
    let differs = |a: f64, b: f64| (a - b).abs() > 1e-9;
    let budget = budget_field(&f.max_bytes_per_hour)?;
    // The form shows sizes rounded (`human_bytes`): a budget shown unchanged is unchanged.
    let shown = r.max_bytes_per_hour.map(human_bytes).unwrap_or_default();
    let req = RolloutRequest {
        percent: Some(f.percent).filter(|v| number(*v) != number(r.percent)),
        step_percent: Some(f.step_percent).filter(|v| differs(*v, r.step_percent)),
        step_secs: Some(f.step_secs).filter(|v| *v != r.step_secs),
        max_failure_rate: f
            .max_failure_rate
            .filter(|v| r.max_failure_rate.is_none_or(|m| differs(*v, m))),
        min_reports: None,
        max_bytes_per_hour: Some(budget).filter(|_| f.max_bytes_per_hour.trim() != shown),
    };
    change_rollout_as(&app, &product_name, &f.channel, req, &s.who()).await?;
    Ok(back_to_channels(&product_name, "rollout"))
}

/// `POST /ui/products/{product}/channels/{channel}/pause|resume`.
pub async fn pause_or_resume(
    State(app): State<App>,
    s: Session,
    NamePath((product_name, channel, action)): NamePath<(Name, Name, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => return Err(PageError(Error::NotFound(format!("no action {other:?}")))),
    };
    let _ = set_paused(app, product_name.clone(), channel, s.who(), paused).await?;
    Ok(back_to_channels(&product_name, &action))
}

#[derive(Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    csrf: String,
    channel: Name,
    /// The JSON `deltaroot-server rollback … --out FILE` writes.
    #[serde(default)]
    statement: String,
}

/// `POST /ui/products/{product}/rollback`: rolls a channel back with a downgrade statement
/// signed offline (`deltaroot-server rollback … --key K --out FILE`), verified exactly as
/// the API's `POST …/rollback` verifies it (the same function).
pub async fn rollback(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    Form(f): Form<RollbackForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let req: RollbackRequest = serde_json::from_str(f.statement.trim()).map_err(|e| {
        Error::BadRequest(format!(
            "the statement is not what `deltaroot-server rollback … --out FILE` writes: {e}"
        ))
    })?;
    let _ = rollback_as(&app, &product_name, &f.channel, &req, &s.who()).await?;
    Ok(back_to_channels(&product_name, "rollback"))
}

#[cfg(test)]
mod tests {
    use super::{budget_field, number};

    #[test]
    fn form_numbers_are_short() {
        assert_eq!(number(10.0), "10");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(0.0), "0");
    }

    #[test]
    fn budgets_read_sizes_and_empty_is_none() {
        assert_eq!(budget_field(" ").ok(), Some(0));
        assert_eq!(budget_field("50G").ok(), Some(50_000_000_000));
        assert!(budget_field("lots").is_err());
    }
}
