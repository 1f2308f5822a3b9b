//! deltaroot's server: stores releases and serves them to a fleet of devices.
//!
//! - [`api`]: the HTTP routes (device API, immutable downloads, publisher uploads) and the
//!   extractors that authenticate callers before any body is read.
//! - [`releases`]: publishing a release and reading releases and their verified manifests.
//! - [`plans`]: the plan of each release pair, computed once and stored.
//! - [`spool`]: upload bodies streamed to temporary files and verified there.
//! - [`conn`]: connection timeouts (request heads, idle connections).
//! - [`channels`]: operator routes: promote, pause, roll back, staged rollouts, audit log.
//! - [`fleet`]: what each device is offered, batched check-ins, the rollout watcher.
//! - [`db`]: products, releases, channels, rollouts, plans, tokens and devices in SQLite
//!   or PostgreSQL.
//! - [`store`]: objects and deltas in a local folder or S3-compatible storage, written once.
//! - [`files`]: keep-first writes of objects, deltas and packs with their recorded sizes.
//! - [`backup`]: `backup` and `restore` of the embedded default.
//! - [`gc`]: housekeeping: the orphan sweep and device retention.
//! - [`cache`]: the bounded maps the fleet's caches use.
//! - [`clock`]: the one clock every server time comes from.
//! - [`deltas`]: deltas for release pairs the publisher did not diff, built in the background
//!   by a bounded queue.
//! - [`metrics`]: Prometheus counters.
//! - [`ui`]: the operators' dashboard: sign-in, sessions, pages.
//! - [`access`]: who may do what: token scopes, user roles, password hashes.
//! - [`client`]: the operator commands' HTTP client.
//! - [`cli`]: the `deltaroot-server` command line.

#[macro_use]
mod macros;

pub mod access;
pub mod answers;
pub mod api;
pub mod backup;
pub mod cache;
pub mod channels;
pub mod checkins;
pub mod cli;
pub mod client;
pub mod clock;
pub mod conn;
pub mod db;
pub mod deltas;
pub mod error;
pub mod files;
pub mod fleet;
pub mod gc;
pub mod metadata;
pub mod metrics;
pub mod plans;
pub mod releases;
pub mod spool;
pub mod store;
pub mod ui;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, Result};
pub use metrics::Metrics;

/// Where state lives and how the fleet is steered.
#[derive(Clone, Debug)]
pub struct Config {
    /// The data folder: the default SQLite database and object folder live here.
    pub data: PathBuf,
    /// `sqlite://…` or `postgres://…`; SQLite in `data` when `None`.
    pub database: Option<String>,
    /// `s3://bucket/prefix`, `file:///…` or a folder; `data/store` when `None`.
    pub objects: Option<String>,
    pub s3: store::S3Options,
    /// Largest upload body, in bytes. Uploads are streamed to a file in `data/uploads`, never
    /// held in memory; JSON bodies (publish, operator routes) are held and share this limit.
    pub max_upload: usize,
    /// How long a client may take to send a request's head (HTTP/1: also the longest wait
    /// for the next request on a kept-alive connection) and a TLS handshake.
    pub header_timeout: Duration,
    /// A connection on which nothing is read or written for this long while no request is
    /// being answered is closed; a request body that stalls this long is refused.
    pub idle_timeout: Duration,
    /// Delta builds (pairs the publisher did not diff) running at once on this replica.
    pub max_builds: usize,
    /// Pairs waiting for or in a build on this replica; past this, pairs are not queued now
    /// (devices get the plan of whole objects and a later request queues the pair).
    pub build_queue: usize,
    /// How long a replica answers checks from its cached channel state.
    pub cache_ttl: Duration,
    /// Most products, channels and plan sizes each of the fleet's caches holds.
    pub cache_capacity: u64,
    pub poll: fleet::PollSettings,
    /// How often the rollout watcher looks at failure rates (`None`: never by itself).
    pub watch_every: Option<Duration>,
    /// zstd level of the deltas the server builds for pairs the publisher did not diff.
    pub delta_level: i32,
    /// Where every time the server records or compares comes from (tests move it forward).
    pub clock: clock::Clock,
    /// How often housekeeping (device retention, the orphan sweep) runs (`None`: never by
    /// itself).
    pub housekeeping_every: Option<Duration>,
    /// Devices whose last check-in is older are forgotten (`None`: kept for ever).
    pub device_retention: Option<Duration>,
    /// Stored files no release references are removed once older than this (`None`: only
    /// by `deltaroot-server gc`).
    pub orphan_grace: Option<Duration>,
    /// Dashboard cookies carry `Secure` (off with `serve --plain-http`).
    pub secure_cookies: bool,
    /// Proxies whose `X-Forwarded-For` names the client for the sign-in limiter (empty: the
    /// socket's peer is the client).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long a device may act on a signed answer (`serve --answer-ttl`).
    pub answer_ttl: Duration,
}

impl Config {
    /// Everything in `data`, the defaults otherwise.
    pub fn in_folder(data: &Path) -> Config {
        Config {
            data: data.to_owned(),
            database: None,
            objects: None,
            s3: store::S3Options::default(),
            max_upload: 2048 << 20,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_builds: 1,
            build_queue: 64,
            cache_ttl: Duration::from_secs(1),
            cache_capacity: fleet::CACHE_CAPACITY,
            poll: fleet::PollSettings {
                secs: 3600,
                jitter: 0.2,
            },
            watch_every: Some(Duration::from_secs(5)),
            delta_level: 19,
            clock: clock::Clock::system(),
            housekeeping_every: Some(Duration::from_secs(3600)),
            device_retention: Some(Duration::from_secs(90 * 86400)),
            orphan_grace: Some(Duration::from_secs(24 * 3600)),
            secure_cookies: true,
            trusted_proxies: Vec::new(),
            answer_ttl: Duration::from_secs(86400),
        }
    }
}

/// Shared state of every request: one reference-counted pointer, since every extractor and
/// middleware clones it (bench/load.sh: cloning and dropping the fields one by one, each an
/// atomic count the two workers share, took 9% of the workers' CPU per update check).
#[derive(Clone)]
pub struct App(Arc<AppState>);

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

/// What [`App`] shares.
pub struct AppState {
    pub db: db::Db,
    pub store: store::Store,
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<fleet::Fleet>,
    /// Largest upload body, in bytes.
    pub max_upload: usize,
    /// Where upload bodies are spooled (`data/uploads`).
    pub uploads: Arc<Path>,
    /// Delta builds queued and running on this replica.
    pub builds: Arc<deltas::Builds>,
    pub delta_level: i32,
    pub timeouts: conn::Timeouts,
    /// The clock of the database and the fleet.
    pub clock: clock::Clock,
    /// The dashboard's sign-in limiter and cookie settings.
    pub ui: Arc<ui::Ui>,
    /// The online key that signs answers to checks, and how long they are valid.
    pub answers: Arc<answers::Signer>,
    /// Manifest deltas and binary plans made for devices.
    pub metadata: Arc<metadata::Metadata>,
}

/// Where the embedded default keeps its files.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn database(&self) -> PathBuf {
        self.0.join("deltaroot.db")
    }
    pub fn objects(&self) -> PathBuf {
        self.0.join("store")
    }
    /// Upload bodies being received.
    pub fn uploads(&self) -> PathBuf {
        self.0.join("uploads")
    }
}

impl App {
    /// Opens the SQLite database and object folder in `data`.
    pub async fn open(data: &Path, max_upload: usize) -> Result<App> {
        App::start(&Config {
            max_upload,
            ..Config::in_folder(data)
        })
        .await
    }

    /// Opens the database and object store `config` names, runs migrations, and starts the
    /// check-in writer, the rollout watcher and housekeeping on the current runtime.
    pub async fn start(config: &Config) -> Result<App> {
        let d = DataDir(config.data.clone());
        let uploads = d.uploads();
        std::fs::create_dir_all(&uploads).map_err(Error::io(&uploads))?;
        spool::remove_stale(&uploads);
        let db = match &config.database {
            Some(url) => db::Db::open(url).await?,
            None => db::Db::open_sqlite(&d.database()).await?,
        }
        .with_clock(config.clock.clone());
        let store = match &config.objects {
            Some(url) => store::Store::open(url, &config.s3)?,
            None => store::Store::local(&d.objects())?,
        };
        let answers = Arc::new(answers::Signer {
            key: db.answer_key(config.clock.now()).await?,
            ttl: config.answer_ttl,
        });
        let metrics = Arc::new(Metrics::default());
        let fleet = fleet::Fleet::start(
            db.clone(),
            fleet::CacheSettings {
                ttl: config.cache_ttl,
                capacity: config.cache_capacity,
            },
            config.poll,
            metrics.clone(),
            answers.clone(),
        );
        if let Some(every) = config.watch_every {
            let f = Arc::downgrade(&fleet);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(f) = f.upgrade() else { return };
                    if let Err(e) = f.watch_rollouts().await {
                        tracing::error!(error = %e, "watching rollouts failed");
                    }
                }
            });
        }
        if let Some(every) = config.housekeeping_every {
            gc::spawn(
                gc::Housekeeping {
                    every,
                    device_retention: config.device_retention,
                    orphan_grace: config.orphan_grace,
                },
                Arc::downgrade(&fleet),
                db.clone(),
                store.clone(),
                metrics.clone(),
            );
        }
        Ok(App(Arc::new(AppState {
            db,
            store,
            metrics,
            fleet,
            max_upload: config.max_upload,
            uploads: Arc::from(uploads.as_path()),
            builds: Arc::new(deltas::Builds::new(config.max_builds, config.build_queue)),
            delta_level: config.delta_level,
            timeouts: conn::Timeouts {
                header: config.header_timeout,
                idle: config.idle_timeout,
            },
            clock: config.clock.clone(),
            ui: ui::Ui::new(config.secure_cookies, config.trusted_proxies.clone()),
            answers,
            metadata: Arc::default(),
        })))
    }
}

/// Loads a PEM certificate chain and private key for HTTPS (HTTP/2 and HTTP/1.1 by ALPN).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, what: String| Error::BadConfig(format!("{}: {what}", path.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let what = match e {
            // The usual mistake: the certificate (or the chain) given as --tls-key.
            rustls::pki_types::pem::Error::NoItemsFound
                if CertificateDer::pem_file_iter(key).is_ok_and(|mut c| c.next().is_some()) =>
            {
                "holds a certificate, not a private key: --tls-key takes the key file".into()
            }
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into()
            }
            e => e.to_string(),
        };
        bad(key, what)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then
/// stops accepting, lets requests in flight finish (downloads included, up to `grace`), and
/// writes the check-ins still queued.
///
/// Connections are bounded in time by `app.timeouts`: a TLS handshake and (HTTP/1) each
/// request head must arrive within `header`; a connection idle for `idle` with no request
/// being answered is closed.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: App,
    tls: Option<Arc<rustls::ServerConfig>>,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let timeouts = app.timeouts;
    let router = api::router(app.clone());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (io, service) = conn::watch_idle(stream, router.clone(), timeouts.idle, Some(peer));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acc) => {
                    let tls = match tokio::time::timeout(timeouts.header, acc.accept(io)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still running after the grace period"
        );
    }
    app.fleet.flush().await;
    Ok(())
}

/// Plain HTTP, no time limit on requests in flight at shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        app,
        None,
        Duration::from_secs(365 * 86400),
        shutdown,
    )
    .await
}

/// A new random upload token.
pub fn new_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the OS has randomness");
    format!("drt_{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate passed as the key, or a file with no key, is named for what it is.
    #[test]
    fn tls_key_mistakes_say_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key, text) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("notes.txt"),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        std::fs::write(&text, "not pem\n").unwrap();
        assert!(tls_config(&cert, &key).is_ok());
        let err = tls_config(&cert, &cert).err().unwrap().to_string();
        assert!(
            err.contains("cert.pem") && err.contains("holds a certificate, not a private key"),
            "{err}"
        );
        let err = tls_config(&cert, &text).err().unwrap().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("no PEM private key"),
            "{err}"
        );
    }
}
