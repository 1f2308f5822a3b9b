//! What the server's integration tests share: a real server on loopback (HTTPS for devices,
//! plain HTTP for the publisher, one `App`) on either backend:
//!
//! - `Backend::Sqlite`: SQLite and an object folder in a temporary data folder;
//! - `Backend::PostgresS3`: a fresh schema on a real PostgreSQL and a fresh prefix in a
//!   bucket of a real S3-compatible server (moto).
//!
//! PostgreSQL and S3 are found through `DELTAROOT_TEST_POSTGRES` (an admin URL),
//! `DELTAROOT_TEST_S3` (`s3://bucket`) and `DELTAROOT_TEST_S3_ENDPOINT`, which `.ci/run`
//! exports (`eval "$(bash .ci/services)"` starts both and prints them). Without them the
//! PostgreSQL and S3 cases are skipped, each saying so on stderr; the SQLite cases always
//! run. Each case's schema is dropped when its server is, and its folders are `TempDir`s it
//! owns.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_format::api::PromoteRequest;
use deltaroot_format::SecretKey;
use deltaroot_server::store::S3Options;
use deltaroot_server::{App, Config};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    PostgresS3,
}

/// Runs each named test function (taking a `Backend`) on both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Sqlite) } )*
        }
        mod postgres_s3 {
            $(
                #[test]
                fn $name() {
                    if $crate::common::services_for(module_path!(), stringify!($name)).is_some() {
                        super::$name($crate::common::Backend::PostgresS3)
                    }
                }
            )*
        }
    };
}

pub struct Services {
    pub postgres: String,
    pub s3: String,
    pub endpoint: String,
}

/// PostgreSQL and S3 from the environment, or `None` when none of the three variables is
/// set. Some but not all of them set is a mistake, and fails.
pub fn services() -> Option<&'static Services> {
    static S: OnceLock<Option<Services>> = OnceLock::new();
    S.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            env("DELTAROOT_TEST_POSTGRES"),
            env("DELTAROOT_TEST_S3"),
            env("DELTAROOT_TEST_S3_ENDPOINT"),
        ) {
            (Some(postgres), Some(s3), Some(endpoint)) => Some(Services {
                postgres,
                s3,
                endpoint,
            }),
            (None, None, None) => None,
            _ => panic!(
                "set all of DELTAROOT_TEST_POSTGRES, DELTAROOT_TEST_S3 and \
                 DELTAROOT_TEST_S3_ENDPOINT, or none: eval \"$(bash .ci/services)\" prints them"
            ),
        }
    })
    .as_ref()
}

/// The services for a PostgreSQL and S3 case, or `None` after saying on stderr (past the
/// test harness's capture) that the case `module::name` is skipped.
pub fn services_for(module: &str, name: &str) -> Option<&'static Services> {
    let s = services();
    if s.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {module}::{name}: DELTAROOT_TEST_POSTGRES, DELTAROOT_TEST_S3 and \
             DELTAROOT_TEST_S3_ENDPOINT are not set (eval \"$(bash .ci/services)\" starts \
             PostgreSQL and S3 and sets them)"
        );
    }
    s
}

/// The password of every user [`Server::add_user`] adds.
pub const PASSWORD: &str = "a long enough secret";

/// A loopback port nothing listens on now, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_name() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM text; each server writes
/// its own copy into its data folder.
pub struct Tls {
    pub cert: String,
    pub key: String,
}

pub fn tls() -> &'static Tls {
    static T: OnceLock<Tls> = OnceLock::new();
    T.get_or_init(|| {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        Tls {
            cert: c.cert.pem(),
            key: c.key_pair.serialize_pem(),
        }
    })
}

/// Where one test's server keeps its state.
#[derive(Clone)]
pub struct Place {
    pub backend: Backend,
    pub config: Config,
    /// The PostgreSQL schema made for this place.
    pub schema: Option<String>,
    /// The PostgreSQL database made for this place ([`Place::empty_twin`]).
    pub database: Option<String>,
}

impl Place {
    pub fn new(backend: Backend, rt: &tokio::runtime::Runtime, data: &Path) -> Place {
        let mut config = Config::in_folder(data);
        config.max_upload = 16 << 20;
        config.cache_ttl = Duration::from_millis(200);
        config.watch_every = None;
        config.housekeeping_every = None;
        config.poll.secs = 600;
        let mut schema = None;
        if backend == Backend::PostgresS3 {
            let s = services().expect("PostgreSQL and S3 cases run only with their services");
            // A schema of its own, not a database: dropping a database takes a checkpoint
            // (0.7 s a case), dropping a schema does not.
            let name = format!("dr_{}", random_name());
            admin(rt, s, &format!("CREATE SCHEMA {name}"));
            let sep = if s.postgres.contains('?') { '&' } else { '?' };
            config.database = Some(format!(
                "{}{sep}options=-c%20search_path%3D{name}",
                s.postgres
            ));
            schema = Some(name);
            config.objects = Some(format!("{}/{}", s.s3.trim_end_matches('/'), random_name()));
            config.s3 = S3Options {
                endpoint: Some(s.endpoint.clone()),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                region: Some("us-east-1".into()),
            };
        }
        Place {
            backend,
            config,
            schema,
            database: None,
        }
    }

    /// Drops the PostgreSQL schema [`Place::new`] made. (The bucket prefix stays in moto's
    /// memory until `.ci/services stop`: deleting it took half a second a case.)
    pub fn remove(&self, rt: &tokio::runtime::Runtime) {
        if let (Some(name), Some(s)) = (&self.database, services()) {
            admin(
                rt,
                s,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        } else if let (Some(name), Some(s)) = (&self.schema, services()) {
            admin(rt, s, &format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        }
    }
}

impl Place {
    /// The arguments (`--data`, `--database`, `--objects`) and the environment (S3's
    /// endpoint and credentials) with which the server's commands reach this place.
    pub fn cli(&self, data: &Path) -> (Vec<std::ffi::OsString>, Vec<(&'static str, String)>) {
        let mut args = vec!["--data".into(), data.as_os_str().to_owned()];
        if let Some(d) = &self.config.database {
            args.extend(["--database".into(), d.into()]);
        }
        if let Some(o) = &self.config.objects {
            args.extend(["--objects".into(), o.into()]);
        }
        let s3 = &self.config.s3;
        let env = [
            ("AWS_ENDPOINT_URL", &s3.endpoint),
            ("AWS_ACCESS_KEY_ID", &s3.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key),
            ("AWS_REGION", &s3.region),
        ];
        let env = env
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect();
        (args, env)
    }

    /// Another place on the same services, empty: a new PostgreSQL database (whose
    /// `search_path` names this place's schema, which a restore brings back) and a new
    /// bucket prefix; for SQLite, the data folder `data`. Dropped by [`Place::remove`].
    pub fn empty_twin(&self, rt: &tokio::runtime::Runtime, data: &Path) -> Place {
        let mut twin = Place::new(Backend::Sqlite, rt, data);
        if let (Some(schema), Some(s)) = (&self.schema, services()) {
            let db = format!("dr_{}", random_name());
            admin(rt, s, &format!("CREATE DATABASE {db}"));
            let base = s.postgres.split('?').next().unwrap();
            let server = &base[..base.rfind('/').unwrap()];
            twin.config.database =
                Some(format!("{server}/{db}?options=-c%20search_path%3D{schema}"));
            twin.config.objects = Some(format!("{}/{}", s.s3.trim_end_matches('/'), random_name()));
            twin.config.s3 = self.config.s3.clone();
            twin.backend = Backend::PostgresS3;
            twin.database = Some(db);
        }
        twin
    }
}

/// Held by the tests that change the host's network (podman sets up namespaces and
/// interfaces for a container) and by the browser test: Chromium aborts the requests in
/// flight with `ERR_NETWORK_CHANGED` when an interface comes or goes.
pub fn network_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one statement on the PostgreSQL admin database.
fn admin(rt: &tokio::runtime::Runtime, s: &Services, sql: &str) {
    use sqlx::Connection;
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&s.postgres)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", s.postgres));
        // A replica's writer may still hold a lock the statement needs: PostgreSQL then
        // names a deadlock, and the statement is run again.
        for tries in 1.. {
            match sqlx::query(sql).execute(&mut c).await {
                Ok(_) => return,
                Err(e) if tries < 5 && e.to_string().contains("deadlock") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    })
}

/// A server on loopback ports: HTTPS (`url`) for devices and operators, plain HTTP
/// (`plain_url`) for the publisher, which trusts only public certificate authorities.
pub struct Server {
    pub url: String,
    pub plain_url: String,
    pub token: String,
    pub data: tempfile::TempDir,
    pub place: Place,
    pub app: App,
    pub rt: tokio::runtime::Runtime,
    /// The test certificate authority's certificate (PEM) in `data`, for clients.
    pub ca_cert: PathBuf,
    /// The first server of a place drops its PostgreSQL schema when dropped; replicas
    /// do not.
    owner: bool,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Server::start_with(backend, |_| {})
    }

    /// A server whose configuration `f` changes first.
    pub fn start_with(backend: Backend, f: impl FnOnce(&mut Config)) -> Server {
        let data = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut place = Place::new(backend, &rt, data.path());
        f(&mut place.config);
        let token = deltaroot_server::new_token();
        let mut s = Server::on(place, data, rt, token.clone());
        s.owner = true;
        s.rt.block_on(s.app.db.create_token("ci", &token, "all", None))
            .unwrap();
        s
    }

    /// Another replica: its own process state and ports, the same database and store.
    pub fn replica(&self) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut place = self.place.clone();
        if place.backend == Backend::Sqlite {
            // The same SQLite file and object folder, opened a second time.
            place.config.database = Some(format!(
                "sqlite://{}?mode=rwc",
                self.data.path().join("deltaroot.db").display()
            ));
            place.config.objects = Some(self.data.path().join("store").display().to_string());
        }
        Server::on(place, data, runtime(), self.token.clone())
    }

    fn on(
        place: Place,
        data: tempfile::TempDir,
        rt: tokio::runtime::Runtime,
        token: String,
    ) -> Server {
        let mut config = place.config.clone();
        config.data = data.path().to_owned();
        let app = rt.block_on(App::start(&config)).unwrap();
        let (ca_cert, key) = (data.path().join("cert.pem"), data.path().join("key.pem"));
        std::fs::write(&ca_cert, &tls().cert).unwrap();
        std::fs::write(&key, &tls().key).unwrap();
        let tls_config = deltaroot_server::tls_config(&ca_cert, &key).unwrap();
        let mut stop = Vec::new();
        let mut urls = Vec::new();
        for tls in [Some(tls_config), None] {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let scheme = if tls.is_some() { "https" } else { "http" };
            urls.push(format!("{scheme}://{}", listener.local_addr().unwrap()));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            rt.spawn(deltaroot_server::serve_with(
                listener,
                app.clone(),
                tls,
                Duration::from_secs(30),
                async {
                    let _ = rx.await;
                },
            ));
            stop.push(tx);
        }
        Server {
            plain_url: urls.pop().unwrap(),
            url: urls.pop().unwrap(),
            token,
            data,
            place,
            app,
            rt,
            ca_cert,
            owner: false,
            stop,
        }
    }

    /// Adds a dashboard user whose password is [`PASSWORD`].
    pub fn add_user(&self, name: &str, role: deltaroot_server::access::Role) {
        let hash = deltaroot_server::access::hash_password(PASSWORD).unwrap();
        self.op(self.app.db.add_user(name, role, &hash)).unwrap();
    }

    /// A stored file's bytes, from the folder or the bucket.
    pub fn read_stored(&self, rel: &str) -> Vec<u8> {
        self.rt.block_on(self.app.store.get(rel)).unwrap().to_vec()
    }

    /// Overwrites a stored file behind the server's back (an attack or a broken disk).
    pub fn write_stored(&self, rel: &str, data: Vec<u8>) {
        self.rt
            .block_on(self.app.store.replace(rel, data.into()))
            .unwrap()
    }

    pub fn served(&self) -> u64 {
        use std::sync::atomic::Ordering;
        self.app.metrics.object_bytes.load(Ordering::Relaxed)
            + self.app.metrics.delta_bytes.load(Ordering::Relaxed)
            + self.app.metrics.pack_bytes.load(Ordering::Relaxed)
    }

    /// Runs a statement without parameters.
    pub fn exec(&self, q: &str) {
        let pool = self.app.db.pool().clone();
        self.rt.block_on(sqlx::query(q).execute(&pool)).unwrap();
    }

    /// Runs a statement with one bytes parameter (`$1`).
    pub fn sql(&self, q: &str, bind: Vec<u8>) {
        let pool = self.app.db.pool().clone();
        self.rt
            .block_on(sqlx::query(q).bind(bind).execute(&pool))
            .unwrap();
    }

    /// Moves the server's clock (shared with its replicas) forward.
    pub fn advance(&self, by: Duration) {
        self.app.clock.advance(by);
    }

    /// Writes queued check-ins now.
    pub fn flush(&self) {
        self.rt.block_on(self.app.fleet.flush());
    }

    pub fn client(&self) -> deltaroot_server::client::Client {
        deltaroot_server::client::Client::new(&self.url, Some(&self.token), Some(&self.ca_cert))
            .unwrap()
    }

    /// A blocking HTTPS client that trusts the test certificate.
    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(tls().cert.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    /// Runs an operator call on the server's runtime.
    pub fn op<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        if self.owner {
            // The server's own writers (check-ins, housekeeping) stop first: a schema
            // dropped under a running insert can deadlock with it.
            self.rt.block_on(self.app.db.pool().close());
            self.place.remove(&self.rt);
        }
    }
}

/// A promotion of `version` to every device at once.
pub fn promote_to(version: &str) -> PromoteRequest {
    PromoteRequest::new(version.parse().unwrap())
}

/// A signing key and its `.pub` file.
pub fn key(seed: u8) -> (SecretKey, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([seed; 32]);
    let pubp = dir.path().join("release.pub");
    std::fs::write(&pubp, key.public().to_text()).unwrap();
    (key, pubp, dir)
}

/// An agent for `root` talking HTTPS to `server`.
pub fn agent_with(
    server: &Server,
    root: &Path,
    trust: &Path,
    f: impl FnOnce(&mut Settings),
) -> Agent {
    let mut s = Settings {
        root: Some(root.to_owned()),
        server: Some(server.url.clone()),
        product: Some("demo".into()),
        trust: vec![trust.to_owned()],
        device_id: Some(format!(
            "test-{}",
            root.file_name()
                .unwrap()
                .to_string_lossy()
                .replace(['/', ' '], "")
        )),
        ca_cert: Some(server.ca_cert.clone()),
        ..Settings::default()
    };
    f(&mut s);
    Agent::new(s).unwrap()
}

pub fn agent(server: &Server, root: &Path, trust: &Path) -> Agent {
    agent_with(server, root, trust, |_| {})
}

/// `deltaroot ARGS` run in this process through the publisher's command line.
pub fn deltaroot(args: &[&str]) -> Result<(), String> {
    use clap::Parser;
    let cli = deltaroot_publisher::cli::Cli::try_parse_from(
        std::iter::once("deltaroot").chain(args.iter().copied()),
    )
    .map_err(|e| e.to_string())?;
    deltaroot_publisher::cli::run(cli).map_err(|e| e.to_string())
}
