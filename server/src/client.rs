//! The operator commands' HTTP client: list releases and channels, promote, pause, resume,
//! roll back (signing the downgrade statement locally), set a rollout's share, read the
//! audit log, against a running server.

use std::path::Path;

use deltaroot_format::api::{
    AuditEntry, ChannelStatus, ErrorBody, PromoteRequest, RollbackRequest, RolloutRequest,
};
use deltaroot_format::{Downgrade, SecretKey};
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

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `ca_cert`: a PEM file of the server's certificate authority, for a private one.
    pub fn new(base: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Client> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("deltaroot-server/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(60));
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
        let http = b.build().map_err(|source| Error::Request {
            method: "GET",
            url: base.to_string(),
            source,
        })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            http,
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
    pub async fn rollback(
        &self,
        product: &str,
        channel: &str,
        version: &str,
        key: &SecretKey,
    ) -> Result<ChannelStatus> {
        let statement = Downgrade {
            product: product.to_string(),
            channel: channel.to_string(),
            version: version.to_string(),
            issued: crate::clock::Clock::system().now() as u64,
        };
        let req = RollbackRequest {
            downgrade: statement.sign(key).to_offer(),
        };
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
        percent: f64,
    ) -> Result<ChannelStatus> {
        self.post(
            &format!("v1/products/{product}/channels/{channel}/rollout"),
            &RolloutRequest { percent },
        )
        .await
    }

    pub async fn audit(&self, product: &str) -> Result<Vec<AuditEntry>> {
        self.get(&format!("v1/products/{product}/audit")).await
    }

    pub async fn device(&self, product: &str, device: &str) -> Result<serde_json::Value> {
        self.get::<serde_json::Value>(&format!("v1/products/{product}/devices/{device}"))
            .await
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
            "\n  rollout {} of {}: {} at {:.1} % (start {:.1} %, +{:.1} % every {} s), from {}, floor {}, {} reports, {} failures",
            r.id,
            r.version,
            r.state,
            r.percent,
            r.start_percent,
            r.step_percent,
            r.step_secs,
            r.previous.as_deref().unwrap_or("-"),
            r.floor.as_deref().unwrap_or("-"),
            r.reports,
            r.failures
        ));
        if let Some(m) = r.max_failure_rate {
            s.push_str(&format!(
                " (stops above {:.1} % after {} reports)",
                m * 100.0,
                r.min_reports
            ));
        }
        if let Some(why) = &r.reason {
            s.push_str(&format!("\n  reason: {why}"));
        }
    }
    s
}
