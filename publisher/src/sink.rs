//! Where a release goes: a running server (`--server`), or a static release folder
//! (`--out`) laid out with the same relative paths as the server's URLs, so any static web
//! server or CDN can serve it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use deltaroot_format::api::{
    AnswerKey, DelegationOffer, ErrorBody, PublishRequest, PublishResponse, RotateKeyRequest,
    RotateKeyResponse, StoredRequest, StoredResponse,
};
use deltaroot_format::{
    attach_packs, compute_plan, delta_path, object_path, Delegation, Hash, Manifest, Method, Name,
    PackIndex, PublicKey, Rotation, SecretKey, VerifiedManifest,
};

use crate::error::{Error, Result};

/// A destination for objects, deltas and the signed manifest.
pub trait Sink: Sync {
    /// Stored sizes of the objects and deltas asked about.
    fn stored(&self, req: &StoredRequest) -> Result<StoredResponse>;
    /// Stores an object (`objects/…`), a delta (`deltas/…`) or a pack (`packs/…`).
    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()>;
    /// Reads back a stored object or delta.
    fn get(&self, rel: &str) -> Result<Vec<u8>>;
    /// Makes the release visible, all at once.
    fn publish(&self, r: &Release<'_>) -> Result<PublishResponse>;
    /// The signed manifest of a release and its signature, as devices download them; `None`
    /// when the destination holds no such release.
    fn release(&self, product: &str, version: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Where [`Sink::release`] looks for a release's manifest (a URL or a path), for messages.
    fn release_at(&self, product: &str, version: &str) -> String;
}

/// The path of a release's manifest, relative to a server's base URL or a release folder.
fn manifest_rel(product: &str, version: &str) -> String {
    format!("v1/products/{product}/releases/{version}/manifest")
}

/// A release as [`Sink::publish`] makes it visible.
pub struct Release<'a> {
    pub signed: &'a VerifiedManifest,
    pub public_key: &'a str,
    /// The release key: it also signs the delegation to a server's answer key.
    pub key: &'a SecretKey,
    /// The channel to point at it, if any.
    pub channel: Option<&'a Name>,
    /// The share of the channel's devices offered it at first (a server's staged rollout).
    pub percent: Option<f64>,
    /// The release devices come from.
    pub old: Option<&'a Manifest>,
    /// The (source, target, bytes) deltas stored for its changed files.
    pub deltas: &'a [(Hash, Hash, u64)],
    /// The packs stored for devices coming from `old`.
    pub packs: &'a [PackIndex],
    /// The delta methods the publisher was told never to send.
    pub skipped: &'a [Method],
}

/// Uploads to a deltaroot server.
pub struct ServerSink {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl ServerSink {
    pub fn new(base: &str, token: &str) -> Result<ServerSink> {
        ServerSink::with_ca_cert(base, token, None)
    }

    /// Like [`ServerSink::new`], also trusting the certificates in the PEM file `ca_cert`
    /// (a private certificate authority that signed the server's certificate; one or more).
    pub fn with_ca_cert(base: &str, token: &str, ca_cert: Option<&Path>) -> Result<ServerSink> {
        let mut builder =
            reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(3600));
        if let Some(p) = ca_cert {
            let pem = std::fs::read(p).map_err(Error::io(p))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::Input {
                    path: p.to_owned(),
                    what: "holds no PEM certificate (--ca-cert takes the certificate authority's certificate)"
                        .into(),
                })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder.build().map_err(|e| Error::Http {
            url: base.into(),
            reason: http_reason(&e),
        })?;
        Ok(ServerSink {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client,
        })
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder, url: &str) -> Result<Vec<u8>> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| Error::Http {
                url: url.into(),
                reason: http_reason(&e),
            })?;
        let status = resp.status();
        let body = resp.bytes().map_err(|e| Error::Http {
            url: url.into(),
            reason: http_reason(&e),
        })?;
        if !status.is_success() {
            let text = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(Error::Server {
                url: url.into(),
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body.to_vec())
    }

    /// The release key's delegation to the server's answer key (`GET /v1/answer-key`),
    /// so that the server signs its answers about the product; none from a server too old
    /// to sign answers.
    fn delegation(&self, product: &str, key: &SecretKey) -> Result<Option<DelegationOffer>> {
        let url = format!("{}/v1/answer-key", self.base);
        let bytes = match self.send(self.client.get(&url), &url) {
            Ok(b) => b,
            Err(Error::Server { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |reason: String| Error::Http {
            url: url.clone(),
            reason,
        };
        let answer: AnswerKey = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("answer is not the expected JSON: {e}")))?;
        let online = PublicKey::from_text(&answer.public_key)
            .map_err(|e| bad(format!("the answer key: {e}")))?;
        Ok(Some(
            Delegation {
                product: manifest_name("product", product)?,
                key: online,
                issued: now_secs(),
            }
            .sign(key),
        ))
    }

    /// Replaces the product's release key `old` by `new` on the server: a rotation statement
    /// signed by `old`, and `new`'s delegation to the server's answer key.
    pub fn rotate_key(
        &self,
        product: &str,
        old: &SecretKey,
        new: &SecretKey,
    ) -> Result<RotateKeyResponse> {
        let name = manifest_name("product", product)?;
        let delegation = self
            .delegation(product, new)?
            .ok_or_else(|| Error::Server {
                url: format!("{}/v1/answer-key", self.base),
                status: 404,
                body: "this server does not sign answers: it cannot take a key rotation".into(),
            })?;
        let rotation = Rotation {
            product: name,
            key: new.public(),
            issued: now_secs(),
        }
        .sign(old);
        self.json(
            &format!("{}/v1/products/{product}/keys", self.base),
            &RotateKeyRequest {
                rotation,
                delegation,
            },
        )
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let bytes = self.send(self.client.post(url).json(body), url)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Http {
            url: url.into(),
            reason: format!("answer is not the expected JSON: {e}"),
        })
    }
}

impl Sink for ServerSink {
    fn stored(&self, req: &StoredRequest) -> Result<StoredResponse> {
        self.json(&format!("{}/v1/stored", self.base), req)
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let url = format!("{}/{rel}", self.base);
        self.send(self.client.put(&url).body(bytes.to_vec()), &url)
            .map(drop)
    }

    fn get(&self, rel: &str) -> Result<Vec<u8>> {
        let url = format!("{}/{rel}", self.base);
        self.send(self.client.get(&url), &url)
    }

    /// `GET /v1/products/P/releases/V/manifest` and `…/manifest.sig`: 404 means the server
    /// holds no such release (or no such product).
    fn release(&self, product: &str, version: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let url = self.release_at(product, version);
        let get = |url: &str| match self.send(self.client.get(url), url) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::Server { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        };
        let Some(manifest) = get(&url)? else {
            return Ok(None);
        };
        let sig_url = format!("{url}.sig");
        let signature = get(&sig_url)?.ok_or_else(|| Error::Server {
            url: sig_url,
            status: 404,
            body: "the manifest is there but not its signature".into(),
        })?;
        Ok(Some((manifest, signature)))
    }

    fn release_at(&self, product: &str, version: &str) -> String {
        format!("{}/{}", self.base, manifest_rel(product, version))
    }

    fn publish(&self, r: &Release<'_>) -> Result<PublishResponse> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let m = r.signed.manifest();
        let req = PublishRequest {
            manifest: b64.encode(r.signed.bytes()),
            signature: b64.encode(r.signed.signature()),
            public_key: r.public_key.to_string(),
            channel: r.channel.cloned(),
            percent: r.percent,
            from_version: r
                .old
                .map(|o| manifest_name("version", &o.version))
                .transpose()?,
            packs: r.packs.iter().map(|p| p.hash).collect(),
            skip_methods: r.skipped.to_vec(),
            delegation: self.delegation(&m.product, r.key)?,
        };
        self.json(
            &format!("{}/v1/products/{}/releases", self.base, m.product),
            &req,
        )
    }
}

/// Seconds since the Unix epoch, for the statements the release key signs.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A product or version name of a manifest, which checked it when it was decoded.
fn manifest_name(field: &'static str, value: &str) -> Result<Name> {
    Ok(Name::new(field, value)?)
}

/// Writes a static release folder.
pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    pub fn new(root: &Path) -> Result<DirSink> {
        std::fs::create_dir_all(root).map_err(Error::io(root))?;
        Ok(DirSink {
            root: root.to_owned(),
        })
    }

    fn size(&self, rel: &str) -> Option<u64> {
        std::fs::metadata(self.root.join(rel)).ok().map(|m| m.len())
    }

    /// Writes `rel` whole under a temporary name and renames it into place; `sync` also
    /// flushes it to disk first. Objects and deltas are not synced one by one (thousands of
    /// fsyncs left the cores idle: trees/kernel 354 s -> see the commit); the whole filesystem
    /// is synced once before the release that names them is written.
    fn write(&self, rel: &str, bytes: &[u8], sync: bool) -> Result<()> {
        let dest = self.root.join(rel);
        let dir = dest.parent().expect("relative paths have a parent");
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
        tmp.write_all(bytes).map_err(Error::io(&dest))?;
        if sync {
            tmp.as_file().sync_all().map_err(Error::io(&dest))?;
        }
        tmp.persist(&dest).map_err(|e| Error::io(&dest)(e.error))?;
        Ok(())
    }

    /// Flushes everything written so far under the folder to disk.
    fn sync_all(&self) -> Result<()> {
        let root = std::fs::File::open(&self.root).map_err(Error::io(&self.root))?;
        rustix::fs::syncfs(&root).map_err(|e| Error::io(&self.root)(e.into()))
    }
}

impl Sink for DirSink {
    fn stored(&self, req: &StoredRequest) -> Result<StoredResponse> {
        Ok(StoredResponse {
            objects: req
                .objects
                .iter()
                .map(|h| self.size(&object_path(h)))
                .collect(),
            deltas: req
                .deltas
                .iter()
                .map(|(s, t)| self.size(&delta_path(s, t)))
                .collect(),
        })
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        self.write(rel, bytes, false)
    }

    fn get(&self, rel: &str) -> Result<Vec<u8>> {
        let path = self.root.join(rel);
        std::fs::read(&path).map_err(Error::io(path))
    }

    /// What [`DirSink::publish`] wrote for the release; a manifest without its signature is
    /// an error (a run cut between the two writes), not a missing release.
    fn release(&self, product: &str, version: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let path = self.root.join(manifest_rel(product, version));
        let manifest = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path)(e)),
        };
        let mut sig = path.into_os_string();
        sig.push(".sig");
        let sig = PathBuf::from(sig);
        let signature = std::fs::read(&sig).map_err(Error::io(sig))?;
        Ok(Some((manifest, signature)))
    }

    fn release_at(&self, product: &str, version: &str) -> String {
        self.root
            .join(manifest_rel(product, version))
            .display()
            .to_string()
    }

    /// No server builds deltas for a static folder: `r.skipped` needs no record.
    fn publish(&self, r: &Release<'_>) -> Result<PublishResponse> {
        let Release {
            signed,
            key,
            channel,
            old,
            deltas,
            packs,
            ..
        } = *r;
        let m = signed.manifest();
        // Checked before encoding too; checked again here for a run started meanwhile.
        if self.release(&m.product, &m.version)?.is_some() {
            return Err(Error::VersionExists {
                product: m.product.clone(),
                version: m.version.clone(),
                at: self.release_at(&m.product, &m.version),
            });
        }
        // The objects and deltas reach the disk before anything names them.
        self.sync_all()?;
        let base = format!("v1/products/{}", m.product);
        let mut to: HashMap<Hash, Vec<(Hash, u64)>> = HashMap::new();
        for (s, t, b) in deltas {
            to.entry(*t).or_default().push((*s, *b));
        }
        let mut plan = compute_plan(
            old,
            m,
            |h| self.size(&object_path(h)),
            |t| to.get(t).cloned().unwrap_or_default(),
        )?;
        attach_packs(&mut plan, packs);
        // Each plan with its signature by the release key beside it (`.sig`): a device
        // takes no plan the release key did not sign.
        let write_plan = |from: Option<&str>, plan: &deltaroot_format::Plan| -> Result<()> {
            let json = serde_json::to_vec_pretty(plan).expect("plans serialise");
            let sig = deltaroot_format::answer::sign_folder_plan(
                key,
                (&m.product, from, &m.version),
                &json,
            );
            let rel = format!("{base}/plans/{}/{}", from.unwrap_or("-"), m.version);
            self.write(&format!("{rel}.sig"), format!("{sig}\n").as_bytes(), true)?;
            self.write(&rel, &json, true)
        };
        write_plan(old.map(|o| o.version.as_str()), &plan)?;
        if old.is_some() {
            let fresh = compute_plan(None, m, |h| self.size(&object_path(h)), |_| Vec::new())?;
            write_plan(None, &fresh)?;
        }
        let rel = format!("{base}/releases/{}", m.version);
        self.write(&format!("{rel}/manifest"), signed.bytes(), true)?;
        self.write(&format!("{rel}/manifest.sig"), signed.signature(), true)?;
        if let Some(channel) = channel {
            self.write(
                &format!("{base}/channels/{channel}/latest"),
                format!("{}\n", m.version).as_bytes(),
                true,
            )?;
        }
        Ok(PublishResponse {
            product: manifest_name("product", &m.product)?,
            version: manifest_name("version", &m.version)?,
            channel: channel.cloned(),
            download_bytes: Some(plan.download_bytes),
        })
    }
}

/// A failed request's whole cause chain (reqwest's own message is only "error sending
/// request"), and, where the server's certificate was not trusted, how to trust it.
fn http_reason(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    if s.contains("invalid peer certificate") || s.contains("UnknownIssuer") {
        s.push_str(
            " (if a private certificate authority signed the server's certificate, \
             pass its certificate with --ca-cert FILE or SSL_CERT_FILE)",
        );
    }
    s
}
