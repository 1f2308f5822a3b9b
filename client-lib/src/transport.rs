//! Fetching from a deltaroot server over HTTP(S).
//!
//! API calls (update checks, manifests, plans) go to the server's `/v1/` endpoints; objects
//! and deltas are plain immutable files under `objects/` and `deltas/`, which may come from
//! the server itself or from any static mirror or CDN (`objects_url`). Downloads go to disk,
//! resume with a `Range` request after a cut, and are bounded by the size the plan promised.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::api::CheckResponse;
use crate::format::Plan;

/// How many times a download is retried after a network error.
const RETRIES: u32 = 4;

/// A connection to one server.
pub struct Http {
    api: String,
    objects: String,
    client: reqwest::blocking::Client,
    /// Bytes received from object and delta downloads, for reports and tests.
    pub downloaded: AtomicU64,
}

impl Http {
    /// `server` is the base URL of the API; `objects` the base URL of objects and deltas
    /// (the server itself when `None`).
    pub fn new(server: &str, objects: Option<&str>) -> Result<Http> {
        Http::with_ca_cert(server, objects, None)
    }

    /// Like [`Http::new`], also trusting the certificate authority in the PEM file
    /// `ca_cert` (a private one that signed the server's certificate).
    pub fn with_ca_cert(
        server: &str,
        objects: Option<&str>,
        ca_cert: Option<&Path>,
    ) -> Result<Http> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("deltaroot-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = ca_cert {
            let pem = std::fs::read(p).map_err(Error::io(p))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Config {
                path: p.to_owned(),
                what: format!("not a PEM certificate: {e}"),
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| Error::Http {
            url: server.to_string(),
            reason: e.to_string(),
        })?;
        let trim = |s: &str| s.trim_end_matches('/').to_string();
        Ok(Http {
            api: trim(server),
            objects: trim(objects.unwrap_or(server)),
            client,
            downloaded: AtomicU64::new(0),
        })
    }

    fn get(&self, url: &str, range_from: u64) -> Result<reqwest::blocking::Response> {
        let mut req = self.client.get(url);
        if range_from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={range_from}-"));
        }
        let resp = req.send().map_err(|e| Error::Http {
            url: url.to_string(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
            return Err(Error::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(resp)
    }

    /// GETs a small document, refusing answers over `limit` bytes.
    pub fn get_bytes(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let url = format!("{}/{path}", self.api);
        let resp = self.get(&url, 0)?;
        let mut out = Vec::new();
        resp.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::Http {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if out.len() as u64 > limit {
            return Err(Error::TooLarge { url, limit });
        }
        Ok(out)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let bytes = self.get_bytes(path, 256 << 20)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Http {
            url: format!("{}/{path}", self.api),
            reason: format!("answer is not the expected JSON: {e}"),
        })
    }

    /// Asks whether `channel` has something newer than `current`.
    pub fn check(
        &self,
        product: &str,
        channel: &str,
        current: Option<&str>,
    ) -> Result<CheckResponse> {
        let mut path = format!("v1/products/{product}/channels/{channel}/check");
        if let Some(v) = current {
            // Names allow `+`, which a query string would read as a space.
            path.push_str(&format!("?current={}", v.replace('+', "%2B")));
        }
        self.get_json(&path)
    }

    /// The manifest bytes and signature of a release.
    pub fn manifest(&self, product: &str, version: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let base = format!("v1/products/{product}/releases/{version}");
        let limit = crate::format::sign::MAX_MANIFEST_BYTES as u64;
        let manifest = self.get_bytes(&format!("{base}/manifest"), limit)?;
        let sig = self.get_bytes(&format!("{base}/manifest.sig"), 64)?;
        Ok((manifest, sig))
    }

    /// The download plan from `from` (or from nothing) to `to`.
    pub fn plan(&self, product: &str, from: Option<&str>, to: &str) -> Result<Plan> {
        let from = from.unwrap_or("-");
        self.get_json(&format!("v1/products/{product}/plans/{from}/{to}"))
    }

    /// Downloads `rel` (an `objects/…` or `deltas/…` path) to `dest`, resuming a partial file,
    /// and returns its length. More than `max` bytes is an error; so is less than `exact`.
    pub fn download(&self, rel: &str, dest: &Path, exact: Option<u64>, max: u64) -> Result<u64> {
        let url = format!("{}/{rel}", self.objects);
        let mut last = None;
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
            }
            match self.download_once(&url, dest, max) {
                Ok(len) => {
                    if let Some(want) = exact {
                        if len != want {
                            let _ = std::fs::remove_file(dest);
                            return Err(Error::Truncated {
                                url,
                                got: len,
                                want,
                            });
                        }
                    }
                    return Ok(len);
                }
                // A transport failure may be passing; anything else is final.
                Err(e @ Error::Http { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn download_once(&self, url: &str, dest: &Path, max: u64) -> Result<u64> {
        let mut have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        if have >= max {
            // A leftover as long as the whole file cannot be resumed: start again.
            let _ = std::fs::remove_file(dest);
            have = 0;
        }
        let resp = match self.get(url, have) {
            Err(Error::HttpStatus { status: 416, .. }) if have > 0 => {
                let _ = std::fs::remove_file(dest);
                self.get(url, 0)?
            }
            other => other?,
        };
        let resumed = have > 0 && resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let mut file: File = if resumed {
            OpenOptions::new().append(true).open(dest)
        } else {
            File::create(dest)
        }
        .map_err(Error::io(dest))?;
        let start = if resumed { have } else { 0 };
        let mut reader = resp.take(max.saturating_sub(start) + 1);
        let mut buf = vec![0u8; 1 << 16];
        let mut len = start;
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::Http {
                url: url.to_string(),
                reason: format!("after {len} bytes: {e}"),
            })?;
            if n == 0 {
                break;
            }
            len += n as u64;
            if len > max {
                drop(file);
                let _ = std::fs::remove_file(dest);
                return Err(Error::TooLarge {
                    url: url.to_string(),
                    limit: max,
                });
            }
            file.write_all(&buf[..n]).map_err(Error::io(dest))?;
            self.downloaded.fetch_add(n as u64, Ordering::Relaxed);
        }
        // Not synced: a partial file is only ever resumed and then verified by hash.
        Ok(len)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
