//! The real `deltaroot-server serve` binary over HTTPS with a private certificate authority,
//! as an operator runs it: its logs carry no colour codes when stderr is not a terminal; the
//! `deltaroot publish` command line refuses the server's certificate naming the problem
//! until `--ca-cert` gives it the CA, then publishes; an agent given a CA's own (CA:TRUE)
//! certificate as the server's is told that the server needs a leaf certificate.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use deltaroot_client::agent::{Agent, Settings};

use crate::common::deltaroot;

const EXE: &str = env!("CARGO_BIN_EXE_deltaroot-server");

/// A `deltaroot-server serve` process on a free loopback port, its stderr collected.
struct Serve {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Serve {
    fn start(data: &Path, cert: &Path, key: &Path) -> Serve {
        let mut child = Command::new(EXE)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        // The address the server logs when it listens: `... serving addr=127.0.0.1:PORT ...`.
        let addr = loop {
            let line = lines
                .next()
                .expect("the server exits before serving")
                .unwrap();
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
            if let Some((_, rest)) = line.split_once("addr=") {
                break rest
                    .split(|c: char| c.is_whitespace() || c == '\x1b')
                    .next()
                    .unwrap()
                    .to_string();
            }
        };
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Serve {
            child,
            url: format!("https://{addr}"),
            log,
            reader: Some(reader),
        }
    }

    /// Stops the server; everything it logged.
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// A CA certificate and key, and a leaf for 127.0.0.1 it signed, as PEM files in `dir`:
/// `ca.pem`, `ca-key.pem`, `cert.pem`, `key.pem`.
fn private_ca(dir: &Path) -> [PathBuf; 4] {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "deltaroot test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let files = ["ca.pem", "ca-key.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
    let texts = [
        ca_cert.pem(),
        ca_key.serialize_pem(),
        leaf_cert.pem(),
        leaf_key.serialize_pem(),
    ];
    for (f, t) in files.iter().zip(texts) {
        std::fs::write(f, t).unwrap();
    }
    files
}

fn agent(url: &str, root: &Path, trust: &Path, ca: &Path) -> Agent {
    Agent::new(Settings {
        root: Some(root.to_owned()),
        server: Some(url.to_owned()),
        product: Some("demo".into()),
        trust: vec![trust.to_owned()],
        device_id: Some("tls-test".into()),
        ca_cert: Some(ca.to_owned()),
        ..Settings::default()
    })
    .unwrap()
}

#[test]
fn https_with_a_private_ca_names_the_certificate_problem_and_logs_without_colour() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let [ca, ca_key, cert, key] = private_ca(t);
    let data = t.join("data");
    let out = Command::new(EXE)
        .args(["token", "create", "ci", "--data"])
        .arg(&data)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("\x1b["),
        "{out:?}"
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let server = Serve::start(&data, &cert, &key);
    let release = t.join("release");
    deltaroot(&["keygen", "--out", release.to_str().unwrap()]).unwrap();
    let tree = t.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "NAME=demo\n").unwrap();
    let key_file = t.join("release.key");
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish",
            tree.to_str().unwrap(),
            "--product",
            "demo",
            "--version",
            "1",
            "--key",
            key_file.to_str().unwrap(),
            "--server",
            &server.url,
            "--token",
            &token,
            "--quiet",
            "--level",
            "3",
        ];
        args.extend_from_slice(extra);
        // Without --ca-cert, SSL_CERT_FILE if set names a bundle without this test's CA.
        deltaroot(&args)
    };
    let err = publish(&[]).unwrap_err();
    assert!(
        err.contains("UnknownIssuer") && err.contains("--ca-cert"),
        "{err}"
    );
    publish(&["--ca-cert", ca.to_str().unwrap()]).unwrap();

    // An agent given the CA checks against the leaf; the release is there.
    let root = t.join("device");
    std::fs::create_dir_all(&root).unwrap();
    let check = agent(&server.url, &root, &t.join("release.pub"), &ca)
        .check()
        .unwrap();
    assert_eq!(
        check.latest.as_ref().map(|v| v.to_string()).as_deref(),
        Some("1"),
        "{check:?}"
    );
    let log = server.stop();
    assert!(log.contains("serving"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in a redirected log:\n{log}"
    );

    // The CA's own certificate as the server's: the agent says what the server needs.
    let data2 = t.join("data2");
    let server = Serve::start(&data2, &ca, &ca_key);
    let err = agent(&server.url, &root, &t.join("release.pub"), &ca)
        .check()
        .unwrap_err()
        .to_string();
    server.stop();
    assert!(
        err.contains("CaUsedAsEndEntity")
            && err.contains("must be a leaf certificate signed by the CA given to the agent"),
        "{err}"
    );
}
