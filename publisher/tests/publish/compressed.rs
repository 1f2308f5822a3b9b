//! Compressed files diffed decompressed and rebuilt bit for bit: gzip documents (GNU gzip
//! as Debian compresses them), xz kernel images and LLVM bitcode, and `--skip-method`, which
//! keeps a method out of `diff` and `publish`.

use std::process::{Command, Stdio};

use crate::common::{publish_args, run, BIN};

/// A Debian-style changelog of `entries` releases, newest first.
fn changelog(entries: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in (0..entries).rev() {
        out.extend_from_slice(
            format!(
                "deltaroot ({i}.{}) stable; urgency=medium\n\n  * Fix #{} in the agent.\n  * Publisher: {} files.\n\n -- Release Team <release@example.org>  Mon, {} Mar 2026 10:00:00 +0000\n\n",
                i % 7,
                i * 7919 % 10007,
                i * 31 % 997,
                1 + i % 28
            )
            .as_bytes(),
        );
    }
    out
}

/// Compresses `raw` with the real GNU gzip, as Debian compresses documentation.
fn gnu_gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn gzip_documents_are_diffed_decompressed_and_rebuilt_bit_for_bit() {
    use deltaroot_format::{apply_delta, Hash, Method};
    let opts = deltaroot_engine::EngineOptions {
        level: 19,
        ..Default::default()
    };
    // A changelog under 64 KiB gains an entry; GNU gzip compressed both.
    let (old, new) = (gnu_gzip(&changelog(250)), gnu_gzip(&changelog(251)));
    let c = deltaroot_engine::candidates(&old, &new, &opts).unwrap();
    assert_eq!(
        c[0].method,
        Method::Gzip,
        "{:?}",
        c.iter()
            .map(|c| (c.method, c.bytes.len()))
            .collect::<Vec<_>>()
    );
    let generic = c.iter().find(|c| c.method != Method::Gzip).unwrap();
    assert!(
        c[0].bytes.len() * 4 < generic.bytes.len(),
        "gzip {} bytes, {} {} bytes",
        c[0].bytes.len(),
        generic.method,
        generic.bytes.len()
    );
    let patch = c[0].bytes.clone();
    let apply = |p: &[u8]| apply_delta(p, &old, Some((Hash::of(&new), new.len() as u64)));
    assert_eq!(apply(&patch).unwrap(), new);
    // Hostile versions: every prefix fails, and no bit flip is a panic or a wrong output.
    for n in 0..patch.len() {
        assert!(apply(&patch[..n]).is_err(), "prefix of {n} bytes accepted");
    }
    for i in deltaroot_format::container::HEADER_LEN..patch.len() {
        let mut p = patch.clone();
        p[i] ^= 0x10;
        if let Ok(out) = apply(&p) {
            assert_eq!(out, new);
        }
    }
    // Applied to a source that is not gzip, it fails naming what is wrong.
    let err = apply_delta(&patch, b"plain", None).unwrap_err().to_string();
    assert!(err.contains("applies to"), "{err}");
}

/// Real LLVM bitcode (PostgreSQL's JIT modules and a summary index, `fixtures/bitcode-pairs`)
/// is diffed unpacked to byte-aligned values and packed again bit for bit, for a fraction of
/// the best generic delta; hostile patches fail or give the new file, never anything else.
#[test]
fn llvm_bitcode_is_diffed_unpacked_and_packed_bit_for_bit() {
    use deltaroot_format::{apply_delta, Hash, Method};
    let opts = deltaroot_engine::EngineOptions {
        level: 19,
        ..Default::default()
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bitcode-pairs");
    for (pair, most) in [("pgp-cfb", 0.6), ("dblink-index", 0.8)] {
        let read = |v: &str| std::fs::read(dir.join(pair).join(v)).unwrap();
        let (old, new) = (read("old.bc"), read("new.bc"));
        let c = deltaroot_engine::candidates(&old, &new, &opts).unwrap();
        let sizes: Vec<_> = c.iter().map(|c| (c.method, c.bytes.len())).collect();
        assert_eq!(c[0].method, Method::Bitcode, "{pair}: {sizes:?}");
        let generic = c.iter().find(|c| c.method != Method::Bitcode).unwrap();
        assert!(
            (c[0].bytes.len() as f64) < most * generic.bytes.len() as f64,
            "{pair}: {sizes:?}"
        );
        let patch = c[0].bytes.clone();
        let apply =
            |p: &[u8], src: &[u8]| apply_delta(p, src, Some((Hash::of(&new), new.len() as u64)));
        assert_eq!(apply(&patch, &old).unwrap(), new, "{pair}");
        for n in 0..patch.len() {
            assert!(
                apply(&patch[..n], &old).is_err(),
                "{pair}: prefix of {n} bytes accepted"
            );
        }
        for i in deltaroot_format::container::HEADER_LEN..patch.len() {
            let mut p = patch.clone();
            p[i] ^= 0x10;
            if let Ok(out) = apply(&p, &old) {
                assert_eq!(out, new, "{pair}: flipped byte {i}");
            }
        }
        // Applied to another file, it fails naming what is wrong.
        let err = apply_delta(&patch, &new, None).unwrap_err().to_string();
        assert!(err.contains("applies to"), "{pair}: {err}");
    }
}

/// A stand-in for a compressed kernel: setup bytes, an xz stream (preset 6, as the kernel's
/// build compresses it) of contents that differ in every 997th word by `seed`, a trailer.
fn xz_image(seed: u32) -> Vec<u8> {
    use deltaroot_format::xz::{Bcj, Options};
    let mut contents = Vec::new();
    for i in 0..40_000u32 {
        let v = i.wrapping_mul(2_654_435_761) >> 20;
        contents.extend_from_slice(&(v + if i % 997 == 0 { seed } else { 0 }).to_le_bytes());
    }
    let o = Options {
        check: 1,
        bcj: Bcj::X86,
        preset: 6,
        dict: 1 << 20,
    };
    let mut out = format!("setup v{seed} ").into_bytes();
    out.extend(deltaroot_format::xz::encode(&contents, &o, None).unwrap());
    out.extend_from_slice(&(contents.len() as u32).to_le_bytes());
    out
}

#[test]
fn skipped_methods_are_never_sent() {
    use deltaroot_format::{DeltaHeader, Method};
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    // Two trees of a compressed kernel and a gzip changelog, which the xz and gzip methods win.
    for (v, seed, entries) in [("A", 1, 250), ("B", 2, 251)] {
        std::fs::create_dir_all(tmp.path().join(v).join("boot")).unwrap();
        std::fs::write(tmp.path().join(v).join("boot/vmlinuz"), xz_image(seed)).unwrap();
        std::fs::write(
            tmp.path().join(v).join("changelog.gz"),
            gnu_gzip(&changelog(entries)),
        )
        .unwrap();
    }

    // `deltaroot diff`: the method that wins, then without it (and without the next one).
    let diff = |old: &str, new: &str, skip: &[Method]| {
        let (patch, back) = (p("patch"), p("back"));
        let mut args = vec!["diff", old, new, "--out", &patch, "--level", "3"];
        for m in skip {
            args.extend(["--skip-method", m.name()]);
        }
        run(&args);
        let bytes = std::fs::read(&patch).unwrap();
        run(&["apply", old, &patch, "--out", &back]);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(new).unwrap());
        (DeltaHeader::decode(&bytes).unwrap().0.method, bytes.len())
    };
    for (file, method) in [("boot/vmlinuz", Method::Xz), ("changelog.gz", Method::Gzip)] {
        let (old, new) = (p(&format!("A/{file}")), p(&format!("B/{file}")));
        let (best, best_len) = diff(&old, &new, &[]);
        assert_eq!(best, method, "{file}");
        let (other, other_len) = diff(&old, &new, &[method]);
        assert_ne!(other, method, "{file}");
        assert!(other_len > best_len, "{file}: {other} {other_len} bytes");
        let (third, _) = diff(&old, &new, &[method, other]);
        assert!(third != method && third != other, "{file}: {third}");
    }

    // `deltaroot publish`: the update's downloads (the report's method column), from
    // release 1 (A) published to the same folder first.
    run(&["keygen", "--out", &p("rel")]);
    let publish = |out: &str, skip: &[&str]| {
        let report = p(&format!("{out}.tsv"));
        let (a, b, out, key) = (p("A"), p("B"), p(out), p("rel.key"));
        run(&[
            "publish",
            &a,
            "--product",
            "demo",
            "--version",
            "1",
            "--key",
            &key,
            "--out",
            &out,
            "--quiet",
            "--level",
            "3",
        ]);
        let mut args = publish_args(
            [&a, &b],
            ["1", "2"],
            &key,
            &[
                "--out", &out, "--quiet", "--level", "3", "--report", &report,
            ],
        );
        for m in skip {
            args.extend(["--skip-method", m]);
        }
        run(&args);
        let mut methods: Vec<String> = std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split('\t').nth(1).unwrap().to_owned())
            .collect();
        methods.sort();
        methods
    };
    assert_eq!(publish("all", &[]), ["gzip", "xz"]);
    let skipped = publish("no-xz", &["xz"]);
    assert!(
        skipped.len() == 2 && !skipped.iter().any(|m| m == "xz"),
        "{skipped:?}"
    );
    let skipped = publish("no-xz-gzip", &["xz", "gzip"]);
    assert!(
        skipped.len() == 2 && !skipped.iter().any(|m| m == "xz" || m == "gzip"),
        "{skipped:?}"
    );

    // The one method --method runs cannot be skipped too.
    let out = Command::new(BIN)
        .args(["diff", &p("A/boot/vmlinuz"), &p("B/boot/vmlinuz")])
        .args(["--out", &p("x"), "--method", "xz", "--skip-method", "xz"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--skip-method xz skips the only method"),
        "{err}"
    );
    assert!(!tmp.path().join("x").exists());
}
