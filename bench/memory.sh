#!/usr/bin/env bash
# The device's memory while it updates: the peak RSS of `deltaroot-agent update`, measured in
# one run on this machine.
#   - large file: a 500 MB disk image (pseudo-random, seeded) changed in place (blocks
#     rewritten, 1 MiB inserted, the tail cut), published as 1 and 2 (zstd level 3) to a
#     deltaroot-server on loopback and updated on a device folder: the agent rebuilds the image from its delta
#     straight into the staging file. Peer, the same pair by zstd --patch-from (--long=30,
#     level 3): its decompressor's peak RSS rebuilding the image.
#   - trees/small and trees/kernel from the corpus: the agent's peak RSS updating A to B.
# Writes bench/results/memory.md and memory.tsv.
#
#   bench/memory.sh                  # builds the corpus first if it is missing
#   TREES= bench/memory.sh           # the large file only
#   LARGE_MB=500                     # size of the disk image
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
TREES=${TREES-small kernel}
LARGE_MB=${LARGE_MB:-500}
for t in $TREES; do
  if [ ! -d "$CORPUS_DIR/trees/$t/B" ]; then
    CORPUS_DIR=$CORPUS_DIR bash "$here/../shared/corpus.sh"
    break
  fi
done
need=()
command -v zstd >/dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
target=${CARGO_TARGET_DIR:-$here/target}
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin=$target/release
work=$(mktemp -d /var/tmp/deltaroot-memory.XXXXXX)
server_pid=
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$work"' EXIT
rows=$work/rows.tsv

# peak NAME CMD...: peak RSS (KiB) and wall seconds of CMD into $work/NAME.time
peak() { /usr/bin/time -f '%M %e' -o "$work/$1.time" "${@:2}"; }
kib() { cut -d' ' -f1 "$work/$1.time"; }
secs() { cut -d' ' -f2 "$work/$1.time"; }

"$bin/deltaroot" keygen --out "$work/release" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
token=$("$bin/deltaroot-server" token create bench --data "$work/data")
"$bin/deltaroot-server" serve --plain-http --listen "127.0.0.1:$port" --data "$work/data" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 50); do curl -fs "$url/healthz" >/dev/null && break; sleep 0.1; done

# update PRODUCT A B [FILE [PUBLISH-ARG...]]: publish A as 1 and B as 2, install 1 on a
# device, time `update` to 2 (and compare FILE with B's after).
update() {
  local p=$1 a=$2 b=$3 f=${4:-}
  shift $(($# < 4 ? $# : 4))
  local pub=("$bin/deltaroot" publish --product "$p" --key "$work/release.key" --server "$url" --token "$token" --quiet --json "$@")
  "${pub[@]}" "$a" --version 1 >/dev/null
  "${pub[@]}" "$a" "$b" --from-version 1 --version 2 --report "$work/$p-report.tsv" >"$work/$p-pub.json"
  local agent=("$bin/deltaroot-agent" --root "$work/device-$p" --server "$url" --product "$p" --trust "$work/release.pub" --json)
  "${agent[@]}" install 1 >/dev/null
  sync
  peak "$p-update" "${agent[@]}" update >"$work/$p-update.json"
  if [ -n "$f" ]; then cmp "$b/$f" "$work/device-$p/current/$f"; fi
  rm -rf "$work/device-$p"
}

echo "== large file: ${LARGE_MB} MB disk image" >&2
mkdir -p "$work/large/A" "$work/large/B"
python3 - "$work/large" "$LARGE_MB" <<'PY'
import random, sys
root, mb = sys.argv[1], int(sys.argv[2])
r = random.Random(2026)
old = bytearray(b"".join(r.randbytes(1 << 20) for _ in range(mb)))
with open(f"{root}/A/disk.img", "wb") as f:
    f.write(old)
new = old
for _ in range(200):  # blocks rewritten in place
    at = r.randrange(0, len(new) - 4096) & ~4095
    new[at:at + 4096] = r.randbytes(4096)
mid = len(new) // 2
new[mid:mid] = r.randbytes(1 << 20)  # a file grown in the middle of the image
del new[-(3 << 20):]  # and its tail cut
with open(f"{root}/B/disk.img", "wb") as f:
    f.write(new)
PY
# zstd level 3 for the image's objects and delta: level 19 takes minutes over 500 MB of
# incompressible data and changes nothing the device does.
update large "$work/large/A" "$work/large/B" disk.img --level 3 --install-level 3
method=$(awk -F'\t' 'NR > 1 {print $0}' "$work/large-report.tsv" | head -1)
delta_bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["download_bytes"])' "$work/large-pub.json")
zstd -q -3 --long=30 --patch-from="$work/large/A/disk.img" "$work/large/B/disk.img" -o "$work/large.zst"
peak large-peer zstd -q -d --long=30 --patch-from="$work/large/A/disk.img" "$work/large.zst" -o "$work/large.out"
cmp "$work/large.out" "$work/large/B/disk.img"
printf 'large\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(kib large-update)" "$(secs large-update)" "$delta_bytes" \
  "$(kib large-peer)" "$(secs large-peer)" "$(stat -c %s "$work/large.zst")" >>"$rows"
rm -rf "$work/large" "$work/large.zst" "$work/large.out"

for t in $TREES; do
  echo "== trees/$t" >&2
  update "$t" "$CORPUS_DIR/trees/$t/A" "$CORPUS_DIR/trees/$t/B"
  bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["download_bytes"])' "$work/$t-pub.json")
  printf '%s\t%s\t%s\t%s\t\t\t\n' "$t" "$(kib "$t-update")" "$(secs "$t-update")" "$bytes" >>"$rows"
done

mkdir -p "$here/bench/results"
cp "$rows" "$here/bench/results/memory.tsv"
python3 - "$rows" "$LARGE_MB" "$method" >"$here/bench/results/memory.md" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
mb, method = sys.argv[2], sys.argv[3].split("\t")
print("# The device's memory while it updates\n")
print("One run of `bench/memory.sh` on this machine. Peak RSS of `deltaroot-agent update`")
print("(download from a server on loopback, verify, rebuild into the staging tree, switch).\n")
print("| update | agent peak MiB | agent s | download MB | peer | peer peak MiB | peer s | peer MB | agent / peer memory |")
print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
for name, k, s, b, pk, ps, pb in rows:
    mib = int(k) / 1024
    if name == "large":
        peer = int(pk) / 1024
        print(f"| {mb} MB disk image, one delta | **{mib:.1f}** | {float(s):.1f} | {int(b)/1e6:.2f} | "
              f"`zstd -d --patch-from --long=30` | {peer:.1f} | {float(ps):.1f} | {int(pb)/1e6:.2f} | {mib/peer:.3f} |")
    else:
        print(f"| trees/{name} | **{mib:.1f}** | {float(s):.1f} | {int(b)/1e6:.2f} | | | | | |")
print()
if len(method) > 1:
    print(f"The disk image's row of the publisher's report: `{' '.join(method)}`.")
PY
cat "$here/bench/results/memory.md"
