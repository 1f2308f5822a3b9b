#!/usr/bin/env bash
# Spine benchmark on the real tree pair trees/small (about 60 Debian packages, old and new):
# publishes A as 1 and B as 2 to a local deltaroot-server on loopback, installs 1 on a device
# folder, updates it to 2, and compares the publisher's promised download size with the
# bytes the server really served for the update. Writes bench/results/spine-small.md.
#
#   bench/spine-small.sh            # builds the corpus first if it is missing
#   LEVEL=19 bench/spine-small.sh   # zstd level for objects and deltas (default 19)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
LEVEL=${LEVEL:-19}
if [ ! -d "$CORPUS_DIR/trees/small/B" ]; then
  CORPUS_DIR=$CORPUS_DIR bash "$here/../shared/corpus.sh"
fi
A=$CORPUS_DIR/trees/small/A
B=$CORPUS_DIR/trees/small/B
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin=$here/target/release
work=$(mktemp -d /tmp/deltaroot-bench.XXXXXX)
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

"$bin/deltaroot" keygen --out "$work/release" >/dev/null
token=$("$bin/deltaroot-server" token create bench --data "$work/data")
"$bin/deltaroot-server" serve --plain-http --listen "127.0.0.1:$port" --data "$work/data" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 50); do curl -fs "$url/healthz" >/dev/null && break; sleep 0.1; done

timed() { # timed NAME CMD... : wall seconds and peak RSS (KiB) into $work/NAME.time
  /usr/bin/env time -f '%e %M' -o "$work/$1.time" "${@:2}"
}
pub=("$bin/deltaroot" publish --product small --key "$work/release.key" --server "$url" --token "$token" --level "$LEVEL" --quiet --json)
echo "publishing A as 1 (first release, every object)..." >&2
timed pub1 "${pub[@]}" "$A" --version 1 >"$work/pub1.json"
echo "publishing B as 2 from A..." >&2
timed pub2 "${pub[@]}" "$A" "$B" --from-version 1 --version 2 >"$work/pub2.json"

agent=("$bin/deltaroot-agent" --root "$work/device" --server "$url" --product small --trust "$work/release.pub")
served() { curl -fs "$url/metrics" | awk '/^deltaroot_served_bytes_total/ {s += $2} END {print s}'; }
echo "installing 1 on the device..." >&2
timed install "${agent[@]}" --json install 1 >"$work/install.json"
before=$(served)
echo "updating the device to 2..." >&2
timed update "${agent[@]}" --json update >"$work/update.json"
after=$(served)

python3 - "$work" "$((after - before))" "$A" "$B" "$LEVEL" >"$here/bench/results/spine-small.md" <<'PY'
import json, sys, os
work, served, a, b, level = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
p1 = json.load(open(f"{work}/pub1.json")); p2 = json.load(open(f"{work}/pub2.json"))
upd = json.load(open(f"{work}/update.json"))["Updated"]
t = {n: open(f"{work}/{n}.time").read().split() for n in ("pub1", "pub2", "install", "update")}
mb = lambda n: f"{n/1e6:.2f} MB"
print("# Spine benchmark: trees/small\n")
print(f"Corpus `trees/small` (A -> B), zstd level {level}, one run on this machine ({os.cpu_count()} cores).\n")
print("| what | value |\n|---|---|")
print(f"| image B, regular files | {mb(p2['image_bytes'])} |")
print(f"| image B as zstd objects (fresh install) | {mb(p2['image_compressed_bytes'])} |")
print(f"| entries changed / added / removed / unchanged | {p2['entries_changed']} / {p2['entries_added']} / {p2['entries_removed']} / {p2['entries_unchanged']} |")
print(f"| new content a device on A needs (uncompressed) | {mb(p2['new_content_bytes'])} |")
print(f"| **download promised by the publisher summary** | **{mb(p2['download_bytes'])}** ({100*p2['download_bytes']/p2['image_bytes']:.1f}% of the image) |")
print(f"| **bytes the server served for the update** | **{mb(served)}** |")
print(f"| served / promised | {served/p2['download_bytes']:.4f} |")
for m, w in sorted(p2["methods"].items()):
    print(f"| method `{m}` cheapest for | {w['count']} contents, {mb(w['bytes'])} |")
print(f"| publish A (first release): wall, peak RSS | {t['pub1'][0]} s, {int(t['pub1'][1])//1024} MiB |")
print(f"| publish A -> B: wall, peak RSS | {t['pub2'][0]} s, {int(t['pub2'][1])//1024} MiB |")
print(f"| device install of A: wall, peak RSS | {t['install'][0]} s, {int(t['install'][1])//1024} MiB |")
print(f"| device update A -> B: wall, peak RSS | {t['update'][0]} s, {int(t['update'][1])//1024} MiB |")
print(f"| update: deltas / objects / hardlinked / copied / written | {upd['deltas']} / {upd['objects']} / {upd['linked']} / {upd['copied']} / {upd['written']} |")
assert served <= p2["download_bytes"], f"served {served} > promised {p2['download_bytes']}"
PY
cat "$here/bench/results/spine-small.md"
