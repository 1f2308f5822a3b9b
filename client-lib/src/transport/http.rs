//! [`Transport`] from a deltaroot server over HTTP(S) (feature `http`).
//!
//! API calls (update checks, manifests, plans) go to the server's `/v1/` endpoints; objects
//! and deltas are plain immutable files under `objects/` and `deltas/`, which may come from
//! the server itself or from any static mirror or CDN (`objects_url`). Downloads go to disk,
//! resume with a `Range` request after a cut, and are bounded by the size the plan promised.
//!
//! [`Http::release_folder`] reads a release folder (`deltaroot publish --out`) that any web
//! server serves instead: the check and the plan are then decided on the device from the
//! folder's files ([`super::layout`]), as from a mounted folder.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    check_exact, copy_bounded, layout, CheckQuery, Deadline, DeadlineSlot, Sink, Transport,
};
use super::{MAX_CHECK_BYTES, MAX_PLAN_BYTES};
use crate::error::{Error, Result};
use deltaroot_format::api::CheckResponse;
use deltaroot_format::{plan_binary, DeviceId, Manifest, Name, Plan};

/// How many times a download is retried after a network error.
const RETRIES: u32 = 4;

/// A connection to one server.
pub struct Http {
    api: String,
    objects: String,
    client: reqwest::blocking::Client,
    /// Bytes received from object and delta downloads, for reports and tests.
    pub downloaded: AtomicU64,
    deadline: DeadlineSlot,
    /// A static release folder, not a deltaroot server.
    folder: bool,
    /// The release keys a plan's delegation must verify with ([`Transport::trust_plans`]);
    /// plans are taken unsigned until they are set.
    plan_trust: std::sync::Mutex<Option<Vec<deltaroot_format::PublicKey>>>,
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
            deadline: DeadlineSlot::default(),
            folder: false,
            plan_trust: Default::default(),
        })
    }

    /// A release folder (`deltaroot publish --out`) served at `url` by any web server,
    /// trusting the certificate authority in `ca_cert` too, if given.
    pub fn release_folder(url: &str, ca_cert: Option<&Path>) -> Result<Http> {
        Ok(Http {
            folder: true,
            ..Http::with_ca_cert(url, None, ca_cert)?
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
        self.get_document(path, limit).map(|(body, _)| body)
    }

    /// [`Http::get_bytes`], with the answer's headers.
    fn get_document(
        &self,
        path: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap)> {
        let url = format!("{}/{path}", self.api);
        let resp = self.get(&url, 0)?;
        let headers = resp.headers().clone();
        let deadline = self.deadline.get();
        let mut body = resp.take(limit + 1);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // A manifest or plan dribbled a byte at a time is held to the deadline too.
            if let Some(d) = &deadline {
                d.check(&url)?;
            }
            let n = match body.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Http {
                        url: url.clone(),
                        reason: e.to_string(),
                    })
                }
            };
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        if out.len() as u64 > limit {
            return Err(Error::TooLarge { url, limit });
        }
        Ok((out, headers))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, limit: u64) -> Result<T> {
        let bytes = self.get_bytes(path, limit)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Http {
            url: format!("{}/{path}", self.api),
            reason: format!("answer is not the expected JSON: {e}"),
        })
    }

    fn download_once(&self, url: &str, to: Sink<'_>, max: u64) -> Result<u64> {
        let mut have = to.file.metadata().map_err(Error::io(to.path))?.len();
        if have >= max {
            // A leftover as long as the whole file cannot be resumed: start again.
            have = 0;
        }
        let resp = match self.get(url, have) {
            Err(Error::HttpStatus { status: 416, .. }) if have > 0 => {
                have = 0;
                self.get(url, 0)?
            }
            other => other?,
        };
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            have = 0;
        }
        // Not synced: a partial file is only ever resumed and then verified by hash.
        copy_bounded(resp, to, have, max, url, &self.downloaded, |e, len| {
            Error::Http {
                url: url.to_string(),
                reason: format!("after {len} bytes: {e}"),
            }
        })
    }
}

impl layout::Files for Http {
    /// A file the web server does not have (404, 410) is not in the folder.
    fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        self.get_bytes(rel, limit).map_err(|e| match e {
            Error::HttpStatus {
                url,
                status: 404 | 410,
                ..
            } => Error::Missing { location: url },
            e => e,
        })
    }

    fn locate(&self, rel: &str) -> String {
        format!("{}/{rel}", self.api)
    }
}

impl Http {
    /// A server's plan, its signature checked when plans must be signed. With the pair's
    /// manifests the binary plan is asked for (an older server answers JSON, which is
    /// taken too).
    fn server_plan(
        &self,
        product: &Name,
        from: Option<&Name>,
        to: &Name,
        manifests: Option<(Option<&Manifest>, &Manifest)>,
    ) -> Result<Plan> {
        let mut path = format!(
            "v1/products/{product}/plans/{}/{to}",
            from.map_or("-", |f| f.as_str())
        );
        if manifests.is_some() {
            path.push_str("?encoding=binary");
        }
        let url = format!("{}/{path}", self.api);
        let (body, headers) = self.get_document(&path, MAX_PLAN_BYTES)?;
        let trust = self.plan_trust.lock().expect("not poisoned").clone();
        if let Some(trusted) = trust {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            deltaroot_format::answer::verify_plan(
                &trusted,
                (product, from.map(|f| f.as_str()), to),
                &body,
                header("deltaroot-signature"),
                header("deltaroot-delegation"),
            )
            .map_err(|e| Error::Answer {
                url: url.clone(),
                source: e,
            })?;
        }
        match manifests {
            Some((from_m, to_m)) if body.starts_with(plan_binary::BINARY_PLAN_MAGIC) => {
                plan_binary::decode(&body, from_m, to_m)
                    .map_err(|e| Error::Answer { url, source: e })
            }
            _ => serde_json::from_slice(&body).map_err(|e| Error::Http {
                url,
                reason: format!("answer is not the expected JSON: {e}"),
            }),
        }
    }
}

/// Names allow `+`, which a query string would read as a space.
fn query_value(v: &str) -> String {
    v.replace('+', "%2B")
}

impl Transport for Http {
    fn location(&self) -> String {
        self.api.clone()
    }

    /// `GET v1/products/P/channels/C/check?device=…&current=…&result=…&attempted=…&pin=…`
    fn check(&self, q: &CheckQuery<'_>) -> Result<CheckResponse> {
        if self.folder {
            return layout::check(self, q);
        }
        let mut query = vec![format!("device={}", query_value(q.device))];
        if let Some(v) = q.current {
            query.push(format!("current={}", query_value(v)));
        }
        if let Some((r, v)) = q.last {
            query.push(format!("result={r}&attempted={}", query_value(v)));
        }
        if let Some(p) = q.pin {
            query.push(format!("pin={}", query_value(p)));
        }
        if let Some((at, sig)) = q.signed {
            query.push(format!("at={at}&sig={sig}"));
        }
        let path = format!(
            "v1/products/{}/channels/{}/check?{}",
            q.product,
            q.channel,
            query.join("&")
        );
        self.get_json(&path, MAX_CHECK_BYTES)
    }

    fn signs_answers(&self) -> bool {
        !self.folder
    }

    fn enroll(
        &self,
        product: &Name,
        device: &DeviceId,
        public_key: &str,
        token: &str,
    ) -> Result<String> {
        let url = format!(
            "{}/v1/products/{product}/devices/{}/key",
            self.api,
            query_value(device)
        );
        let http = |reason: String| Error::Http {
            url: url.clone(),
            reason,
        };
        let resp = self
            .client
            .post(&url)
            .bearer_auth(token)
            .json(&deltaroot_format::api::EnrollRequest {
                public_key: public_key.to_string(),
            })
            .send()
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        if !status.is_success() {
            return Err(Error::HttpStatus {
                url,
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        let r: deltaroot_format::api::EnrollResponse = serde_json::from_str(&body)
            .map_err(|e| http(format!("answer is not the expected JSON: {e}")))?;
        Ok(r.key_id)
    }

    fn get(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        self.get_bytes(rel, limit)
    }

    fn manifest_since(
        &self,
        product: &Name,
        version: &Name,
        running: &Name,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        if self.folder {
            return self.manifest(product, version);
        }
        let query = format!("?from={}", query_value(running));
        super::manifest_and_signature(self, product, version, &query)
    }

    fn plan(&self, product: &Name, from: Option<&Name>, to: &Name) -> Result<Plan> {
        if self.folder {
            let trust = self.plan_trust.lock().expect("not poisoned").clone();
            return layout::plan(self, product, from, to, trust.as_deref());
        }
        self.server_plan(product, from, to, None)
    }

    fn plan_between(
        &self,
        product: &Name,
        from: Option<(&Name, &Manifest)>,
        to: (&Name, &Manifest),
    ) -> Result<Plan> {
        if self.folder {
            return self.plan(product, from.map(|f| f.0), to.0);
        }
        let manifests = (from.map(|f| f.1), to.1);
        self.server_plan(product, from.map(|f| f.0), to.0, Some(manifests))
    }

    fn trust_plans(&self, trusted: Vec<deltaroot_format::PublicKey>) {
        *self.plan_trust.lock().expect("not poisoned") = Some(trusted);
    }

    fn download(
        &self,
        rel: &str,
        file: &mut File,
        path: &Path,
        exact: Option<u64>,
        max: u64,
    ) -> Result<u64> {
        let url = format!("{}/{rel}", self.objects);
        let mut last = None;
        for attempt in 0..=RETRIES {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
            }
            match self.download_once(
                &url,
                Sink {
                    file: &mut *file,
                    path,
                    deadline: self.deadline.get().as_ref(),
                },
                max,
            ) {
                Ok(len) => return check_exact(file, &url, len, exact),
                // A transport failure may be passing; anything else is final.
                Err(e @ Error::Http { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    fn set_deadline(&self, deadline: Option<Deadline>) {
        self.deadline.set(deadline);
    }
}

/// An error and its causes, and what to do where the server's certificate is the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    if s.contains("CaUsedAsEndEntity") {
        s.push_str(CA_AS_SERVER);
    } else if s.contains("UnknownIssuer") {
        s.push_str(UNKNOWN_ISSUER);
    }
    s
}

/// rustls refuses a server certificate that is itself a certificate authority (a
/// self-signed `CA:TRUE` certificate given both as the server's and as `ca_cert`).
const CA_AS_SERVER: &str = " (the server presented a certificate authority's certificate \
    (CA:TRUE): the server certificate must be a leaf certificate signed by the CA given to \
    the agent as --ca-cert / ca_cert; the README shows how to make both with openssl)";

const UNKNOWN_ISSUER: &str = " (no trusted certificate authority signed the server's \
    certificate: give the agent the private CA's certificate as --ca-cert / ca_cert)";

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::Http;
    use crate::error::Error;
    use crate::transport::{Deadline, Transport};

    /// A server that sends the head of a 1 MB answer and 10 bytes of it, then nothing, with
    /// the connection held open: a plan (or an object) dribbled. A clock that moves 500 s
    /// per read of it passes an 800 s deadline at the second chunk, so the read that would
    /// wait for ever is never made.
    #[test]
    fn a_dribbled_document_or_download_is_stopped_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let mut c = conn.unwrap();
                let mut head = [0u8; 4096];
                let _ = c.read(&mut head);
                let _ =
                    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789");
                held.push(c);
            }
        });
        let http = Http::new(&format!("http://{addr}"), None).unwrap();
        let start = Instant::now();
        let reads = Arc::new(AtomicU64::new(0));
        let clock = Arc::new(move || {
            start + Duration::from_secs(500 * reads.fetch_add(1, Ordering::Relaxed))
        });
        http.set_deadline(Some(Deadline::new(800, clock.clone())));
        let err = http.get_bytes("v1/plan", 1 << 20).unwrap_err();
        assert!(matches!(err, Error::Deadline { secs: 800, .. }), "{err}");
        assert!(err.to_string().contains("v1/plan"), "{err}");

        http.set_deadline(Some(Deadline::new(800, clock)));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dl");
        let mut file = std::fs::File::create(&path).unwrap();
        let err = http
            .download("objects/ab/cd", &mut file, &path, None, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, Error::Deadline { secs: 800, .. }), "{err}");
        assert!(err.to_string().contains("objects/ab/cd"), "{err}");
    }
}
