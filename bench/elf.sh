#!/usr/bin/env bash
# ELF benchmark: deltaroot's single-file engine against C bsdiff 4.3, xdelta3 -9,
# zstd -19 --patch-from, Chromium's Zucchini (+ zstd -19) and qbsdiff, on the real ELF pairs
# of the corpus (`../shared/corpus.sh`). Every patch is applied back and compared with the
# new file. Writes bench/results/elf.md (and elf.tsv with every measurement).
#
#   bench/elf.sh [PAIR ...]     # default: every pair under $CORPUS_DIR/elf
#   ELF_ARCH=arm64 bench/elf.sh [PAIR ...]
#   ELF_ARCH=big bench/elf.sh [PAIR ...]
#
# ELF_ARCH=arm64 measures the AArch64 pairs instead: the same programs and libraries from
# Debian 12's arm64 packages, at the versions pinned in bench/corpus-pinned.sh (which downloads
# and unpacks them into $CORPUS_DIR/elf-arm64), and writes bench/results/elf-arm64.md (.tsv).
# ELF_ARCH=big measures the browser-sized pairs of the same script (Chromium, Firefox's libxul:
# $CORPUS_DIR/elf-big) against Zucchini alone, once each (ELF_BENCH_REPS=1 unless set): C
# bsdiff and qbsdiff sort 64-bit suffix arrays (8 to 17 bytes per byte: over 5 GiB), and zstd
# and xdelta3 take a quarter of an hour more per pair; writes bench/results/elf-big.md (.tsv).
#
# The workspace builds into $CARGO_TARGET_DIR when it is set (./target otherwise); the peers
# always build into bench/peers/target.
#
# Patches are applied back with `deltaroot apply` (the publisher's CLI) and, for deltaroot's
# own patch, also with `deltaroot-apply` (the device's stand-alone tool, the same decoder in a
# process of its own, as small as Zucchini's).
#
# deltaroot and Zucchini, the two compared on time and memory, run ELF_BENCH_REPS times (3),
# taking turns, and each figure is the median of its runs: the machine's speed drifts within
# minutes, and a process's peak RSS varies by a few hundred KiB from run to run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
arch=${ELF_ARCH:-amd64}
case $arch in
  amd64) pairset=elf
    [ -d "$CORPUS_DIR/elf" ] || CORPUS_DIR=$CORPUS_DIR bash "$here/../shared/corpus.sh" ;;
  arm64|big) pairset=elf-$arch
    CORPUS_DIR=$CORPUS_DIR bash "$here/bench/corpus-pinned.sh" "$arch" ;;
  *) echo "elf.sh: ELF_ARCH is amd64 (the default), arm64 or big, not $arch" >&2; exit 2 ;;
esac
need=()
command -v bsdiff >/dev/null || need+=(bsdiff)
command -v xdelta3 >/dev/null || need+=(xdelta3)
command -v clang++-19 >/dev/null || need+=(clang-19)  # Zucchini is C++23
command -v zstd >/dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
target=${CARGO_TARGET_DIR:-$here/target}
CARGO_TARGET_DIR=$target cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p deltaroot-publisher -p deltaroot-agent
CXX=clang++-19 CARGO_TARGET_DIR=$here/bench/peers/target cargo build --release --quiet --manifest-path "$here/bench/peers/Cargo.toml"
dr=$target/release/deltaroot
devapply=$target/release/deltaroot-apply
peers=$here/bench/peers/target/release/deltaroot-bench-peers
work=$(mktemp -d /tmp/deltaroot-elf.XXXXXX)
trap 'rm -rf "$work"' EXIT
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=($(ls "$CORPUS_DIR/$pairset"))
tsv=$here/bench/results/$pairset.tsv
reps=${ELF_BENCH_REPS:-3}
peers_all=yes
if [ "$arch" = big ]; then reps=${ELF_BENCH_REPS:-1} peers_all=no; fi
printf 'pair\ttool\told\tnew\tpatch\tgen_s\tgen_kib\tapply_s\tapply_kib\n' >"$tsv"

measure() { # measure FILE CMD... : appends "seconds kib" of the command to FILE
  /usr/bin/env time -f '%e %M' -o "$1" "${@:2}" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; return 1; }
}
row() { # row PAIR TOOL PATCH
  local pair=$1 tool=$2 patch=$3
  if ! cmp -s "$work/out" "$new"; then echo "$pair/$tool: applying the patch did not give the new file" >&2; exit 1; fi
  read -r gs gk <"$work/gen.t"; read -r as ak <"$work/apply.t"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$tool" "$(stat -c %s "$old")" "$(stat -c %s "$new")" \
    "$(stat -c %s "$patch")" "$gs" "$gk" "$as" "$ak" >>"$tsv"
}
again() { # again RUNS FILE CMD... : runs CMD and appends its "seconds kib" line to RUNS
  measure "$2" "${@:3}" && cat "$2" >>"$1"
}
median() { # median RUNS FILE : writes to FILE the median seconds and the median KiB of RUNS
  local col
  for col in 1 2; do cut -d' ' -f"$col" "$1" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; done |
    paste -sd' ' >"$2"
}
for pair in "${pairs[@]}"; do
  old=$CORPUS_DIR/$pairset/$pair/old new=$CORPUS_DIR/$pairset/$pair/new
  [ -f "$old" ] || continue
  echo "== $pair ($(stat -c %s "$new") bytes)" >&2
  # deltaroot (the publisher's choice) and Zucchini+zstd, in turns; the patches are the same
  # each time, the last one is applied back.
  zgen="'$peers' zucchini-gen '$old' '$new' '$work/zraw' && zstd -q -f -19 --long=31 '$work/zraw' -o '$work/zucchini'"
  zapply="zstd -q -f -d --long=31 '$work/zucchini' -o '$work/zraw2' && '$peers' zucchini-apply '$old' '$work/zraw2' '$work/out'"
  rm -f "$work"/*.runs
  zucchini=yes
  for ((i = 0; i < reps; i++)); do
    again "$work/dr-gen.runs" "$work/gen.t" "$dr" diff "$old" "$new" --out "$work/dr" --level 19
    again "$work/dr-apply.runs" "$work/apply.t" "$dr" apply "$old" "$work/dr" --out "$work/out"
    cmp -s "$work/out" "$new" || { echo "$pair/deltaroot: applying the patch did not give the new file" >&2; exit 1; }
    again "$work/dev-apply.runs" "$work/apply.t" "$devapply" "$old" "$work/dr" --out "$work/out"
    cmp -s "$work/out" "$new" || { echo "$pair/deltaroot-apply: applying the patch did not give the new file" >&2; exit 1; }
    if [ $zucchini = yes ] && again "$work/z-gen.runs" "$work/gen.t" bash -c "$zgen"; then
      again "$work/z-apply.runs" "$work/apply.t" bash -c "$zapply"
    else
      zucchini=no
    fi
  done
  median "$work/dr-gen.runs" "$work/gen.t"
  median "$work/dr-apply.runs" "$work/apply.t"
  "$dr" apply "$old" "$work/dr" --out "$work/out" >/dev/null
  row "$pair" deltaroot "$work/dr"
  median "$work/dev-apply.runs" "$work/apply.t"
  "$devapply" "$old" "$work/dr" --out "$work/out" >/dev/null
  row "$pair" deltaroot-apply "$work/dr"
  if [ $peers_all = yes ] && measure "$work/gen.t" "$dr" diff "$old" "$new" --out "$work/dr-elf" --level 19 --method elf 2>/dev/null; then
    measure "$work/apply.t" "$dr" apply "$old" "$work/dr-elf" --out "$work/out"
    row "$pair" deltaroot-elf "$work/dr-elf"
  fi
  if [ $peers_all = yes ]; then
    measure "$work/gen.t" bsdiff "$old" "$new" "$work/bsdiff"
    measure "$work/apply.t" bspatch "$old" "$work/out" "$work/bsdiff"
    row "$pair" bsdiff "$work/bsdiff"
    measure "$work/gen.t" "$peers" qbsdiff "$old" "$new" "$work/qbsdiff"
    measure "$work/apply.t" "$peers" qbspatch "$old" "$work/qbsdiff" "$work/out"
    row "$pair" qbsdiff "$work/qbsdiff"
    measure "$work/gen.t" xdelta3 -9 -e -f -s "$old" "$new" "$work/xdelta3"
    measure "$work/apply.t" xdelta3 -d -f -s "$old" "$work/xdelta3" "$work/out"
    row "$pair" xdelta3 "$work/xdelta3"
    measure "$work/gen.t" zstd -q -f -19 --long=31 --patch-from="$old" "$new" -o "$work/zstd"
    measure "$work/apply.t" zstd -q -f -d --long=31 --patch-from="$old" "$work/zstd" -o "$work/out"
    row "$pair" zstd "$work/zstd"
  fi
  if [ $zucchini = yes ]; then
    median "$work/z-gen.runs" "$work/gen.t"
    median "$work/z-apply.runs" "$work/apply.t"
    bash -c "$zapply"
    row "$pair" zucchini+zstd "$work/zucchini"
  fi
done
python3 "$here/bench/elf_report.py" "$tsv" "$arch" "$reps" >"$here/bench/results/$pairset.md"
cat "$here/bench/results/$pairset.md"
