#!/usr/bin/env bash
# deltaroot in one command, on the embedded default (SQLite and a local object folder):
# builds the tools, makes two versions of a small image tree (real ELF binaries, setuid
# files, device nodes, xattrs, renames), starts a server on loopback, publishes both
# releases, installs the first on a device folder, updates it to the second, and prints
# what the update saved. Run as root: the trees hold device nodes and other owners.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (the sample trees hold device nodes and owners)" >&2; exit 2; }
echo "== building the release binaries (the first time takes a while: about 20 minutes on 2 cores)"
cargo build --release --manifest-path "$here/Cargo.toml"
# Where cargo put them: CARGO_TARGET_DIR when set (relative to here, as cargo reads it).
bin=$(cd "$here" && realpath -m "${CARGO_TARGET_DIR:-target}")/release
work=${DEMO_DIR:-$(mktemp -d /tmp/deltaroot-demo.XXXXXX)}
mkdir -p "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
trap 'kill "${server_pid:-0}" 2>/dev/null || true' EXIT

echo "== sample trees in $work/trees"
python3 "$here/fixtures/spine-tree/make.py" --force "$work/trees" >/dev/null
"$bin/deltaroot" keygen --out "$work/release" >/dev/null 2>&1 || true
token=$("$bin/deltaroot-server" token create "demo-$$" --data "$work/server")
"$bin/deltaroot-server" serve --plain-http --listen "127.0.0.1:$port" --data "$work/server" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 50); do curl -fs "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

v1=1.0.$$ v2=2.0.$$
echo "== publishing $v1 (first release) and $v2 (from $v1) to $url"
pub=("$bin/deltaroot" publish --product demo --key "$work/release.key" --server "$url" --token "$token")
"${pub[@]}" "$work/trees/v1" --version "$v1"
"${pub[@]}" "$work/trees/v1" "$work/trees/v2" --from-version "$v1" --version "$v2" | tee "$work/publish-$v2.txt"

agent=("$bin/deltaroot-agent" --root "$work/device" --server "$url" --product demo --trust "$work/release.pub")
echo "== device: install $v1, then update"
served() { curl -fs "$url/metrics" | awk '/^deltaroot_served_bytes_total/ { s += $2 } END { print s + 0 }'; }
"${agent[@]}" install "$v1"
installed=$(served)
"${agent[@]}" check
"${agent[@]}" update
"${agent[@]}" status
python3 "$here/fixtures/spine-tree/make.py" --check-tree 2 "$work/device/current" | tail -n 1
echo "== what it cost (every counter: curl $url/metrics)"
updated=$(served)
image=$(sed -n 's/^  image: //p' "$work/publish-$v2.txt")
echo "the device downloaded $installed bytes to install $v1 whole, then $((updated - installed)) bytes to update to $v2 (whose image is $image)"
echo "== everything is in $work (device root: $work/device)"
