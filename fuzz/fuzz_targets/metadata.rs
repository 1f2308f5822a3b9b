//! The metadata a device rebuilds or reads against its manifests, on hostile input:
//! `[u8 selector][u32 LE length][running manifest bytes][rest]`. Selector even: `rest` is a
//! manifest delta applied to the running manifest bytes (`manifest_delta::apply`); odd: `rest`
//! is a binary plan's body (compressed here, so the fuzzer works on the fields rather than on
//! zstd's framing) read against two small manifests, with and without a running release.
#![no_main]

use std::sync::OnceLock;

use deltaroot_format::manifest::{Entry, Kind, Manifest, Meta};
use deltaroot_format::plan_binary::{decode, BINARY_PLAN_MAGIC};
use deltaroot_format::{manifest_delta, EntryPath, Hash};
use libfuzzer_sys::fuzz_target;

fn manifest(version: &str, files: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        product: "demo".into(),
        version: version.into(),
        created: 1,
        shared: Vec::new(),
        entries: files
            .iter()
            .map(|(p, data)| Entry::Node {
                path: EntryPath::new(*p).unwrap(),
                kind: Kind::File {
                    size: data.len() as u64,
                    hash: Hash::of(data),
                },
                meta: Meta::default(),
            })
            .collect(),
    }
}

fn pair() -> &'static (Manifest, Manifest) {
    static PAIR: OnceLock<(Manifest, Manifest)> = OnceLock::new();
    PAIR.get_or_init(|| {
        (
            manifest("1.0", &[("a", b"one"), ("b", b"two"), ("c", b"three")]),
            manifest("1.1", &[("a", b"one!"), ("b", b"two"), ("c", b"3"), ("d", b"4")]),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else { return };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (running, rest) = rest.split_at(len);
    if selector % 2 == 0 {
        let _ = manifest_delta::apply(rest, running);
        return;
    }
    let Ok(body) = zstd::bulk::compress(rest, 1) else { return };
    let mut plan = BINARY_PLAN_MAGIC.to_vec();
    plan.extend_from_slice(&body);
    let (a, b) = pair();
    let _ = decode(&plan, Some(a), b);
    let _ = decode(&plan, None, b);
});
