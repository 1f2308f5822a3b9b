#!/usr/bin/env bash
# Runs the decoder fuzz targets (ELF payloads, delta containers, packs, manifest deltas and
# binary plans) for a bounded time
# each (default 60 s), seeded with real ELF patches built from fixtures/elf-pairs, gzip
# and xz deltas of files compressed by the real gzip and xz, and bitcode deltas of
# fixtures/bitcode-pairs. Fails if a target finds a crash.
#   fuzz/run.sh [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
target_dir=${CARGO_TARGET_DIR:-$here/target}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
# cargo fuzz needs nightly-only flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d /tmp/deltaroot-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash "$here/fixtures/elf-pairs/make.sh" "$work/pairs" >/dev/null
mkdir -p "$work/seeds"
cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p deltaroot-engine --example fuzz_seed
for pair in "$work"/pairs/*/*; do
  name=$(basename "$(dirname "$pair")")-$(basename "$pair")
  "$target_dir/release/examples/fuzz_seed" "$pair/old" "$pair/new" "$work/seeds/$name"
  # The whole container too: its ELF payload framed as the publisher frames it (xz or zstd).
  "$target_dir/release/examples/fuzz_seed" --delta "$pair/old" "$pair/new" "$work/seeds/$name-delta"
done
# Two versions of a short text, compressed as Debian does (gzip -9n) and as a kernel is (xz).
seq 1 2000 >"$work/text1"
{ echo "entry 0"; seq 1 1990; } >"$work/text2"
for v in 1 2; do
  gzip -9n -c "$work/text$v" >"$work/text$v.gz"
  xz --check=crc32 -6 -c "$work/text$v" >"$work/text$v.xz"
done
for ext in gz xz; do
  "$target_dir/release/examples/fuzz_seed" --delta "$work/text1.$ext" "$work/text2.$ext" "$work/seeds/text-$ext"
done
# Real LLVM bitcode in two versions (the bitcode method).
for pair in "$here"/fixtures/bitcode-pairs/*/; do
  "$target_dir/release/examples/fuzz_seed" --delta "$pair/old.bc" "$pair/new.bc" "$work/seeds/bitcode-$(basename "$pair")"
done
# Many deflate blocks: only GNU gzip's own deflater rebuilds these.
seq 1 60000 | gzip -9n >"$work/long1.gz"
{ echo "entry 0"; seq 1 59990; } | gzip -9n >"$work/long2.gz"
"$target_dir/release/examples/fuzz_seed" --delta "$work/long1.gz" "$work/long2.gz" "$work/seeds/long-gz"
cd "$here/fuzz"
for target in elf_decode apply_delta pack_read metadata; do
  mkdir -p "$work/corpus-$target"
  # What broke this target before starts its corpus (fixtures/fuzz-regressions).
  cp "$here"/fixtures/fuzz-regressions/"$target"-* "$work/corpus-$target"/ 2>/dev/null || true
  echo "fuzzing $target for ${secs}s" >&2
  cargo fuzz run "$target" "$work/corpus-$target" "$work/seeds" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1 2>&1 | tail -n 15
done
