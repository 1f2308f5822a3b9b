//! The `deltaroot` command as a release engineer runs it: tar input, a static release folder
//! served by a plain static web server and installed from by a device, and single-file
//! `diff`/`apply`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_client::tree;
use deltaroot_publisher::input::InputTree;

const BIN: &str = env!("CARGO_BIN_EXE_deltaroot");

fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests need root for the fixture"
        );
        let dir = std::env::temp_dir().join(format!("deltaroot-pub-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spine-tree/make.py");
        let ok = Command::new("python3")
            .arg(&script)
            .arg("--force")
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        dir
    })
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "deltaroot {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tar_and_tar_zst_read_like_the_directory() {
    let fx = fixture().join("v2");
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("v2.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(&fx)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let zst = tmp.path().join("v2.tar.zst");
    std::fs::write(
        &zst,
        zstd::encode_all(std::fs::File::open(&tar).unwrap(), 3).unwrap(),
    )
    .unwrap();
    let dir = InputTree::open(&fx, &|_| {}).unwrap();
    for archive in [&tar, &zst] {
        let t = InputTree::open(archive, &|_| {}).unwrap();
        let diffs = tree::differences(&dir.entries, &t.entries);
        assert!(
            diffs.is_empty(),
            "{}:\n{}",
            archive.display(),
            diffs.join("\n")
        );
        for e in &t.entries {
            if let Some((h, _)) = e.file() {
                assert_eq!(deltaroot_client::format::Hash::of(&t.read(&h).unwrap()), h);
            }
        }
    }
}

/// A plain static file server (Python's http.server) over the release folder.
struct Static(std::process::Child, String);

impl Static {
    fn start(dir: &Path) -> Static {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Static(child, url)
    }
}

impl Drop for Static {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn static_release_folder_installs_a_device() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    let out = tmp.path().join("out");
    let (o, k) = (out.to_str().unwrap(), key.with_extension("key"));
    let k = k.to_str().unwrap();
    let v1 = fx.join("v1");
    let v2 = fx.join("v2");
    run(&[
        "publish",
        v1.to_str().unwrap(),
        "--product",
        "demo",
        "--version",
        "1",
        "--key",
        k,
        "--out",
        o,
        "--quiet",
        "--level",
        "3",
    ]);
    let summary = run(&[
        "publish",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        "--product",
        "demo",
        "--from-version",
        "1",
        "--version",
        "2",
        "--key",
        k,
        "--out",
        o,
        "--quiet",
        "--level",
        "3",
        "--json",
        "--memory-mib",
        "64",
        "--report",
        tmp.path().join("report.tsv").to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(
        summary["download_bytes"].as_u64().unwrap()
            < summary["image_compressed_bytes"].as_u64().unwrap() / 5
    );
    // The report lists every download, largest first, and adds up to the summary's total.
    let report = std::fs::read_to_string(tmp.path().join("report.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = report
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    let bytes: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(
        !rows.is_empty() && bytes.windows(2).all(|w| w[0] >= w[1]),
        "{report}"
    );
    assert_eq!(
        bytes.iter().sum::<u64>(),
        summary["download_bytes"].as_u64().unwrap()
    );
    assert!(
        rows.iter().all(|r| r.len() == 5 && !r[4].is_empty()),
        "{report}"
    );
    // The small changed files went in packs, which the plan file names.
    assert!(summary["packs"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        rows.iter().filter(|r| r[3] == "yes").count() > 40,
        "{report}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("v1/products/demo/plans/1/2")).unwrap())
            .unwrap();
    for p in plan["packs"].as_array().unwrap() {
        let hash = p["hash"].as_str().unwrap();
        let file = out.join(format!("packs/{}/{hash}", &hash[..2]));
        assert_eq!(
            std::fs::metadata(file).unwrap().len(),
            p["bytes"].as_u64().unwrap()
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("v1/products/demo/channels/stable/latest")).unwrap(),
        "2\n"
    );

    let web = Static::start(&out);
    let agent = Agent::new(Settings {
        root: Some(tmp.path().join("device")),
        server: Some(web.1.clone()),
        product: Some("demo".into()),
        trust: vec![key.with_extension("pub")],
        ..Settings::default()
    })
    .unwrap();
    agent.install("1").unwrap();
    let r = agent.install("2").unwrap();
    assert_eq!(
        r.downloaded_bytes,
        summary["download_bytes"].as_u64().unwrap()
    );
    let diffs = tree::differences(
        &tree::scan(&v2).unwrap(),
        &tree::scan(&tmp.path().join("device/current")).unwrap(),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn single_file_diff_and_apply_round_trip_and_refuse_the_wrong_base() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (fx.join("v1/usr/bin/hello"), fx.join("v2/usr/bin/hello"));
    let patch = tmp.path().join("hello.patch");
    let back = tmp.path().join("hello.new");
    let said = run(&[
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--out",
        patch.to_str().unwrap(),
    ]);
    assert!(said.contains("bytes by"), "{said}");
    assert!(std::fs::metadata(&patch).unwrap().len() < std::fs::metadata(&new).unwrap().len() / 4);
    run(&[
        "apply",
        old.to_str().unwrap(),
        patch.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&new).unwrap());

    let wrong = fx.join("v1/etc/passwd");
    let out = Command::new(BIN)
        .args([
            "apply",
            wrong.to_str().unwrap(),
            patch.to_str().unwrap(),
            "--out",
        ])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("applies to"), "{err}");
    let mut cut = std::fs::read(&patch).unwrap();
    cut.truncate(cut.len() - 3);
    std::fs::write(&patch, cut).unwrap();
    let out = Command::new(BIN)
        .args([
            "apply",
            old.to_str().unwrap(),
            patch.to_str().unwrap(),
            "--out",
        ])
        .arg(tmp.path().join("y"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !tmp.path().join("y").exists(),
        "a failed apply writes nothing"
    );
}

/// Real ELF pairs from `fixtures/elf-pairs`, built once per run.
fn elf_pairs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("deltaroot-elf-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/elf-pairs/make.sh");
        let ok = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "{} failed", script.display());
        dir
    })
}

fn elf_candidate(old: &[u8], new: &[u8]) -> (usize, Vec<u8>) {
    use deltaroot_client::format::Method;
    let opts = deltaroot_publisher::engine::EngineOptions {
        level: 19,
        ..Default::default()
    };
    let only = |m| {
        let opts = deltaroot_publisher::engine::EngineOptions {
            only: Some(m),
            ..opts
        };
        deltaroot_publisher::engine::diff_file(old, new, &opts).unwrap()
    };
    let bsdiff = only(Method::BsdiffZstd)
        .expect("bsdiff applies")
        .bytes
        .len();
    let elf = only(Method::Elf).expect("the ELF method applies");
    // The publisher tries the ELF method and, where it encodes, not plain bsdiff.
    let tried: Vec<Method> = deltaroot_publisher::engine::candidates(old, new, &opts)
        .unwrap()
        .iter()
        .map(|c| c.method)
        .collect();
    assert!(tried.contains(&Method::Elf) && !tried.contains(&Method::BsdiffZstd));
    // As a pack holds it (its frames decompressed), the payload gives the same file.
    use deltaroot_client::format::container::{apply_payload, unwrap_payload, Payload};
    let (h, payload) = deltaroot_client::format::DeltaHeader::decode(&elf.bytes).unwrap();
    let body = unwrap_payload(&h, payload, 1 << 30).unwrap();
    assert_eq!(
        apply_payload(&h, Payload::Unwrapped(&body), old).unwrap(),
        new
    );
    (bsdiff, elf.bytes)
}

/// The old and new files of fixture pair `name` (`<arch>/<pair>`), built by `make.sh` with
/// `tool`, which the message names when the pair is missing.
fn elf_pair(name: &str, tool: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = elf_pairs().join(name);
    assert!(
        dir.exists(),
        "{} was not built (is {tool} installed?)",
        dir.display()
    );
    (
        std::fs::read(dir.join("old")).unwrap(),
        std::fs::read(dir.join("new")).unwrap(),
    )
}

fn elf_pairs_round_trip_and_beat_bsdiff(arch: &str) {
    for pair in ["calc-pie", "calc-static", "shapes-so", "calc-o"] {
        let (old, new) = elf_pair(
            &format!("{arch}/{pair}"),
            &format!("the compiler for {arch}"),
        );
        let (bsdiff, elf) = elf_candidate(&old, &new);
        let back = deltaroot_client::format::apply_delta(&elf, &old, None).unwrap();
        assert_eq!(back, new, "{arch}/{pair}");
        // Payloads of revision 1, which publishers made before revision 2, still apply.
        let raw = deltaroot_publisher::elf::encode_revision(&old, &new, false)
            .unwrap()
            .unwrap();
        assert_eq!(raw[0] & 0x40, 0);
        let back = deltaroot_client::elf::decode(&old, raw, new.len() as u64).unwrap();
        assert_eq!(back, new, "{arch}/{pair}, revision 1");
        assert!(
            elf.len() < bsdiff,
            "{arch}/{pair}: elf {} bytes, bsdiff {bsdiff}",
            elf.len()
        );
    }
}

#[test]
fn elf_method_round_trips_and_beats_bsdiff_on_real_aarch64_binaries() {
    elf_pairs_round_trip_and_beat_bsdiff("aarch64");
}

#[test]
fn elf_method_round_trips_and_beats_bsdiff_on_real_x86_64_binaries() {
    elf_pairs_round_trip_and_beat_bsdiff("x86_64");
    // The publisher's own fixture tree: the executable and the library whose soname changed.
    for (o, n) in [
        ("v1/usr/bin/hello", "v2/usr/bin/hello"),
        ("v1/usr/lib/libgreet.so.1", "v2/usr/lib/libgreet.so.2"),
    ] {
        let (old, new) = (
            std::fs::read(fixture().join(o)).unwrap(),
            std::fs::read(fixture().join(n)).unwrap(),
        );
        let (_, elf) = elf_candidate(&old, &new);
        assert_eq!(
            deltaroot_client::format::apply_delta(&elf, &old, None).unwrap(),
            new,
            "{n}"
        );
    }
}

/// A module's split BTF after the base it refers to renumbered its types and moved its
/// strings: the ELF method predicts every moved type id and string offset from the shift
/// tables it carries, so the patched image needs almost no byte of the `.BTF` section
/// changed (a field the alignment did not match may still be predicted from a neighbour's
/// shift).
#[test]
fn elf_method_follows_a_renumbered_btf_base() {
    let (old, new) = elf_pair("x86_64/btf-ko", "pahole, Debian's dwarves,");
    let moved = old.iter().zip(&new).filter(|(a, b)| a != b).count();
    assert!(
        old.len() == new.len() && moved >= 40,
        "the fixture's BTF should move ({moved} bytes differ)"
    );
    let (bsdiff, elf) = elf_candidate(&old, &new);
    assert!(
        elf.len() < bsdiff,
        "elf {} bytes, bsdiff {bsdiff}",
        elf.len()
    );
    use deltaroot_client::format::container::unwrap_payload;
    let (h, payload) = deltaroot_client::format::DeltaHeader::decode(&elf).unwrap();
    let raw = unwrap_payload(&h, payload, 1 << 30).unwrap();
    assert!(raw[0] & 0x80 != 0, "the payload carries BTF shift tables");
    let diff = deltaroot_client::elf::diff_range(&raw).unwrap();
    let changed = raw[diff].iter().filter(|&&b| b != 0).count();
    assert!(
        changed * 10 <= moved,
        "{changed} diff bytes left after normalisation, {moved} bytes moved"
    );
}

/// File offsets (in `new`) of the 8-byte-aligned words of loaded data sections that hold
/// an address of `new` and differ from the word at the same place of the same section in
/// `old`: pointers that moved and that no relocation names in an executable at a fixed
/// address.
fn moved_pointer_words(old: &[u8], new: &[u8]) -> Vec<usize> {
    use goblin::elf::section_header::{SHF_ALLOC, SHF_EXECINSTR, SHT_INIT_ARRAY, SHT_PROGBITS};
    let (eo, en) = (
        goblin::elf::Elf::parse(old).unwrap(),
        goblin::elf::Elf::parse(new).unwrap(),
    );
    let address = |v: u64| {
        v != 0
            && en.program_headers.iter().any(|p| {
                p.p_type == goblin::elf::program_header::PT_LOAD
                    && (p.p_vaddr..p.p_vaddr + p.p_memsz).contains(&v)
            })
    };
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let mut out = Vec::new();
    for s in &en.section_headers {
        let data = s.sh_type == SHT_PROGBITS || s.sh_type == SHT_INIT_ARRAY;
        if !data
            || s.sh_flags & u64::from(SHF_ALLOC) == 0
            || s.sh_flags & u64::from(SHF_EXECINSTR) != 0
        {
            continue;
        }
        let name = en.shdr_strtab.get_at(s.sh_name).unwrap();
        let Some(o) = eo
            .section_headers
            .iter()
            .find(|o| eo.shdr_strtab.get_at(o.sh_name) == Some(name))
        else {
            continue;
        };
        let first = (8 - (s.sh_addr % 8) as usize) % 8;
        for k in (first..s.sh_size.min(o.sh_size) as usize).step_by(8) {
            let (at_new, at_old) = (s.sh_offset as usize + k, o.sh_offset as usize + k);
            if k + 8 <= s.sh_size.min(o.sh_size) as usize
                && address(word(new, at_new))
                && word(new, at_new) != word(old, at_old)
            {
                out.push(at_new);
            }
        }
    }
    out
}

/// The new-file offsets of the nonzero diff bytes of a method-4 payload without BTF tables
/// (FORMAT.md §6.4: architecture byte, records, diff bytes in record order).
fn diff_byte_offsets(raw: &[u8]) -> Vec<usize> {
    assert_eq!(raw[0] & 0x80, 0, "no BTF tables expected");
    let mut at = 1;
    let mut varint = || {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = raw[at];
            at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v as usize;
            }
            shift += 7;
        }
    };
    let records: Vec<(usize, usize)> = (0..varint())
        .map(|_| {
            let (mix, copy) = (varint(), varint());
            varint();
            (mix, copy)
        })
        .collect();
    varint();
    let mut diff = &raw[at..];
    let (mut pos, mut out) = (0, Vec::new());
    for (mix, copy) in records {
        out.extend((0..mix).filter(|&i| diff[i] != 0).map(|i| pos + i));
        diff = &diff[mix..];
        pos += mix + copy;
    }
    out
}

/// An executable at a fixed address keeps its pointer tables (functions and strings, in
/// `.rodata` and `.init_array`) as plain words that no relocation names. A payload of
/// revision 2 finds them by their value (phase E), so the patched image needs almost none of
/// the moved pointers changed; a payload of revision 1, which does not, changes nearly all
/// of them. Both apply.
#[test]
fn elf_method_follows_the_pointers_of_fixed_executables() {
    for arch in ["x86_64", "aarch64"] {
        let (old, new) = elf_pair(
            &format!("{arch}/calc-static"),
            &format!("the compiler for {arch}"),
        );
        let moved = moved_pointer_words(&old, &new);
        assert!(moved.len() >= 8, "{arch}: {} pointers moved", moved.len());
        let touched = |revised: bool| {
            let raw = deltaroot_publisher::elf::encode_revision(&old, &new, revised)
                .unwrap()
                .unwrap();
            assert_eq!(raw[0] & 0x40 != 0, revised, "{arch}: revision flag");
            let back = deltaroot_client::elf::decode(&old, raw.clone(), new.len() as u64).unwrap();
            assert_eq!(back, new, "{arch}: revision 2 = {revised}");
            let diff = diff_byte_offsets(&raw);
            moved
                .iter()
                .filter(|&&w| diff.iter().any(|&d| (w..w + 8).contains(&d)))
                .count()
        };
        let (before, after) = (touched(false), touched(true));
        assert!(
            before * 2 >= moved.len() && after * 4 <= moved.len(),
            "{arch}: of {} moved pointers, {before} left as diff bytes by revision 1, {after} by revision 2",
            moved.len()
        );
    }
}

#[test]
fn hostile_elf_patches_fail_cleanly() {
    for arch in ["x86_64", "aarch64"] {
        hostile_patches_fail_cleanly(elf_pair(
            &format!("{arch}/calc-pie"),
            &format!("the compiler for {arch}"),
        ));
    }
    // A payload with BTF shift tables: damaged tables fail as cleanly.
    hostile_patches_fail_cleanly(elf_pair("x86_64/btf-ko", "pahole"));
    // An executable at a fixed address: the restore also finds words by their value.
    hostile_patches_fail_cleanly(elf_pair("x86_64/calc-static", "gcc"));
}

fn hostile_patches_fail_cleanly((old, new): (Vec<u8>, Vec<u8>)) {
    let (_, elf) = elf_candidate(&old, &new);
    let apply = |p: &[u8]| deltaroot_client::format::apply_delta(p, &old, None);
    for n in 0..elf.len() {
        assert!(apply(&elf[..n]).is_err(), "prefix of {n} bytes accepted");
    }
    let mut rejected = 0;
    for i in 0..elf.len() {
        for bit in [0x01u8, 0x80] {
            let mut p = elf.clone();
            p[i] ^= bit;
            // Never a panic; anything that is accepted must still be the verified target.
            match apply(&p) {
                Ok(out) => assert_eq!(out, new),
                Err(_) => rejected += 1,
            }
        }
    }
    assert!(rejected > elf.len(), "only {rejected} flips rejected");
    // Garbage that decompresses, behind a valid header.
    let header = &elf[..deltaroot_client::format::container::HEADER_LEN];
    for junk in [
        vec![1u8; 64],
        vec![1, 0, 0, 0, 0, 0],
        b"\x01\xff\xff\xff\xff\x0f".to_vec(),
        vec![2, 0, 0, 0, 0],
    ] {
        let mut p = header.to_vec();
        p.extend(zstd::bulk::compress(&junk, 3).unwrap());
        assert!(apply(&p).is_err());
    }
}

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
    use deltaroot_client::format::{apply_delta, Hash, Method};
    let opts = deltaroot_publisher::engine::EngineOptions {
        level: 19,
        ..Default::default()
    };
    // A changelog under 64 KiB gains an entry; GNU gzip compressed both.
    let (old, new) = (gnu_gzip(&changelog(250)), gnu_gzip(&changelog(251)));
    let c = deltaroot_publisher::engine::candidates(&old, &new, &opts).unwrap();
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
    for i in deltaroot_client::format::container::HEADER_LEN..patch.len() {
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

/// A stand-in for a compressed kernel: setup bytes, an xz stream (preset 6, as the kernel's
/// build compresses it) of contents that differ in every 997th word by `seed`, a trailer.
fn xz_image(seed: u32) -> Vec<u8> {
    use deltaroot_client::xz::{Bcj, Options};
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
    out.extend(deltaroot_client::xz::encode(&contents, &o, None).unwrap());
    out.extend_from_slice(&(contents.len() as u32).to_le_bytes());
    out
}

#[test]
fn skipped_methods_are_never_sent() {
    use deltaroot_client::format::{DeltaHeader, Method};
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

    // `deltaroot publish`: the update's downloads (the report's method column).
    run(&["keygen", "--out", &p("rel")]);
    let publish = |out: &str, skip: &[&str]| {
        let report = p(&format!("{out}.tsv"));
        let (a, b, out, key) = (p("A"), p("B"), p(out), p("rel.key"));
        let mut args = vec![
            "publish",
            &a,
            &b,
            "--product",
            "demo",
            "--from-version",
            "1",
            "--version",
            "2",
            "--key",
            &key,
            "--out",
            &out,
            "--quiet",
            "--level",
            "3",
            "--report",
            &report,
        ];
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
