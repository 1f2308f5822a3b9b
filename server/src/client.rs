//! The operator commands' HTTP client: list releases and channels, promote, pause, resume,
//! roll back (signing the downgrade statement locally), set a rollout's share, read the
//! audit log, against a running server.

use std::path::Path;
use std::time::Duration;

use deltaroot_format::api::{
    AuditEntry, ChannelStatus, ErrorBody, PromoteRequest, RollbackRequest, RolloutRequest,
};
use deltaroot_format::{human_bytes, Downgrade, SecretKey};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// A release as `GET /v1/products/{p}/releases` lists it.
#[derive(Clone, Debug, serde::Deserialize, Serialize)]
pub struct ReleaseInfo {
    pub version: String,
    pub created: i64,
    pub image_bytes: i64,
    pub entries: i64,
    pub published_at: i64,
    pub published_by: String,
    /// Delta methods its publisher never sends (`deltaroot publish --skip-method`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_methods: Vec<deltaroot_format::Method>,
}

/// A device's last check-in, as `GET /v1/products/{p}/devices[/{id}]` lists it.
#[derive(Clone, Debug, serde::Deserialize, Serialize)]
pub struct DeviceInfo {
    pub device_id: String,
    pub channel: String,
    /// The version it runs.
    pub current: Option<String>,
    /// What it reported of its last attempt: `ok`, `failed` or `rolled-back`.
    pub result: Option<String>,
    /// The version of its last attempt.
    pub attempted: Option<String>,
    pub seen_at: i64,
}

/// A time for people: `2026-12-03 11:35:17 UTC`.
pub fn when(epoch_secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// One line per device for people.
pub fn show_device(d: &DeviceInfo) -> String {
    let mut s = format!(
        "{}\t{}\truns {}",
        d.device_id,
        d.channel,
        d.current.as_deref().unwrap_or("nothing yet")
    );
    match (&d.attempted, &d.result) {
        (Some(v), Some(r)) => s.push_str(&format!("\tlast attempt {v}: {r}")),
        (None, Some(r)) => s.push_str(&format!("\tlast report {r}")),
        _ => {}
    }
    s.push_str(&format!("\tseen {}", when(d.seen_at)));
    s
}

/// An HTTP client that also trusts `ca_cert` (a PEM file of a private certificate
/// authority) and gives up on a request after `timeout`; `url` names it in errors.
fn http_client(url: &str, ca_cert: Option<&Path>, timeout: Duration) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("deltaroot-server/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout);
    if let Some(p) = ca_cert {
        let pem = std::fs::read(p).map_err(|source| Error::Io {
            path: p.to_owned(),
            source,
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Error::BadConfig(format!("{}: not a PEM certificate: {e}", p.display()))
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|source| Error::Request {
        method: "GET",
        url: url.to_string(),
        source,
    })
}

/// `GET url` once (`deltaroot-server health`, a container's health check): the body when
/// the server answers 200 OK; otherwise an error naming the URL and the status the server
/// answered, or why no answer came (refused, timed out after `timeout`, a certificate).
pub async fn health(url: &str, ca_cert: Option<&Path>, timeout: Duration) -> Result<String> {
    let fail = |source| Error::Request {
        method: "GET",
        url: url.to_string(),
        source,
    };
    let resp = http_client(url, ca_cert, timeout)?
        .get(url)
        .send()
        .await
        .map_err(fail)?;
    let status = resp.status();
    let body = resp.text().await.map_err(fail)?;
    if status != reqwest::StatusCode::OK {
        return Err(Error::Remote {
            method: "GET",
            url: url.to_string(),
            status: status.as_u16(),
            message: body.chars().take(300).collect(),
        });
    }
    Ok(body)
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `ca_cert`: a PEM file of the server's certificate authority, for a private one.
    pub fn new(base: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Client> {
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            http: http_client(base, ca_cert, Duration::from_secs(60))?,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T> {
        let url = format!("{}/{path}", self.base);
        let mut req = match method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        };
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let fail = |source| Error::Request {
            method,
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(fail)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            return Err(Error::Remote {
                method,
                url,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Remote {
            method,
            url,
            status: status.as_u16(),
            message: format!("answer is not the expected JSON: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call("POST", path, Some(body)).await
    }

    pub async fn releases(&self, product: &str) -> Result<Vec<ReleaseInfo>> {
        self.get(&format!("v1/products/{product}/releases")).await
    }

    pub async fn channels(&self, product: &str) -> Result<Vec<ChannelStatus>> {
        self.get(&format!("v1/products/{product}/channels")).await
    }

    pub async fn channel(&self, product: &str, channel: &str) -> Result<ChannelStatus> {
        self.get(&format!("v1/products/{product}/channels/{channel}"))
            .await
    }

    pub async fn promote(
        &self,
        product: &str,
        channel: &str,
        req: &PromoteRequest,
    ) -> Result<ChannelStatus> {
        self.post(
            &format!("v1/products/{product}/channels/{channel}/promote"),
            req,
        )
        .await
    }

    pub async fn pause(&self, product: &str, channel: &str) -> Result<ChannelStatus> {
        self.post(
            &format!("v1/products/{product}/channels/{channel}/pause"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn resume(&self, product: &str, channel: &str) -> Result<ChannelStatus> {
        self.post(
            &format!("v1/products/{product}/channels/{channel}/resume"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Signs a downgrade statement for `version` with the release key and sends it.
    /// Rolls `channel` back to `version` with a downgrade statement signed now by `key`.
    pub async fn rollback(
        &self,
        product: &str,
        channel: &str,
        version: &str,
        key: &SecretKey,
    ) -> Result<ChannelStatus> {
        let req = rollback_request(product, channel, version, key);
        self.post(
            &format!("v1/products/{product}/channels/{channel}/rollback"),
            &req,
        )
        .await
    }

    pub async fn rollout(
        &self,
        product: &str,
        channel: &str,
        req: &RolloutRequest,
    ) -> Result<ChannelStatus> {
        self.post(
            &format!("v1/products/{product}/channels/{channel}/rollout"),
            req,
        )
        .await
    }

    pub async fn audit(&self, product: &str) -> Result<Vec<AuditEntry>> {
        self.get(&format!("v1/products/{product}/audit")).await
    }

    pub async fn device(&self, product: &str, device: &str) -> Result<DeviceInfo> {
        self.get(&format!("v1/products/{product}/devices/{device}"))
            .await
    }

    /// Every device of a product (page by page, by id), or those whose last report is
    /// `result` (`ok`, `failed`, `rolled-back`).
    pub async fn devices(&self, product: &str, result: Option<&str>) -> Result<Vec<DeviceInfo>> {
        let page = crate::channels::DEVICES_PAGE as usize;
        let mut all: Vec<DeviceInfo> = Vec::new();
        loop {
            let mut path = format!("v1/products/{product}/devices?limit={page}");
            if let Some(last) = all.last() {
                path.push_str(&format!("&after={}", last.device_id));
            }
            if let Some(r) = result {
                path.push_str(&format!("&result={r}"));
            }
            let got: Vec<DeviceInfo> = self.get(&path).await?;
            let done = got.len() < page;
            all.extend(got);
            if done {
                return Ok(all);
            }
        }
    }
}

/// One line per channel for people.
pub fn show_channel(c: &ChannelStatus) -> String {
    let mut s = format!(
        "{}/{}: {}{}",
        c.product,
        c.channel,
        c.version.as_deref().unwrap_or("-"),
        if c.paused { " (paused)" } else { "" }
    );
    if let Some(d) = &c.downgrade {
        s.push_str(&format!(", rolled back to {d} by signed downgrade"));
    }
    if let Some(r) = &c.rollout {
        s.push_str(&format!(
            "\n  rollout #{} of version {}: {}, offered to {:.1} % of devices",
            r.id, r.version, r.state, r.percent,
        ));
        if r.step_percent > 0.0 {
            s.push_str(&format!(
                " (started at {:.1} %, +{:.1} % every {} s since {})",
                r.start_percent,
                r.step_percent,
                r.step_secs,
                when(r.started_at)
            ));
        }
        s.push_str(&format!(
            "; others stay on {}",
            r.previous.as_deref().unwrap_or("nothing")
        ));
        if let Some(f) = &r.floor {
            s.push_str(&format!(", older devices pass through {f} first"));
        }
        s.push_str(&format!(
            "\n  reports since it began: {}, failures {}",
            r.reports, r.failures
        ));
        if let Some(m) = r.max_failure_rate {
            s.push_str(&format!(
                " (stops above {:.1} % after {} reports)",
                m * 100.0,
                r.min_reports
            ));
        }
        if let Some(b) = r.max_bytes_per_hour {
            s.push_str(&format!(
                "\n  paced at {} an hour: {} charged this hour, {} devices admitted",
                human_bytes(b),
                human_bytes(r.egress_bytes_this_hour),
                r.devices_admitted
            ));
        }
        if let Some(why) = &r.reason {
            s.push_str(&format!("\n  reason: {why}"));
        }
    }
    s
}

/// A rollback's body: a downgrade statement of `product`/`channel` to `version`, issued now
/// and signed with the release key. `rollback --out FILE` writes it as JSON, which the
/// channels page of the dashboard (or `POST …/rollback`) takes as it is.
pub fn rollback_request(
    product: &str,
    channel: &str,
    version: &str,
    key: &SecretKey,
) -> RollbackRequest {
    let statement = Downgrade {
        product: product.to_string(),
        channel: channel.to_string(),
        version: version.to_string(),
        issued: crate::clock::Clock::system().now() as u64,
    };
    RollbackRequest {
        downgrade: statement.sign(key).to_offer(),
    }
}
