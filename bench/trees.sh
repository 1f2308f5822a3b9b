#!/usr/bin/env bash
# deltaroot against OSTree static deltas on the corpus's real tree pairs, side by side in one
# run on this machine. For trees/small and trees/kernel (A -> B):
#   - full image: tar of B, zstd -19;
#   - OSTree (Debian's ostree): commit A and B to an archive repository, generate the static
#     delta A -> B, apply it offline on a device repository holding A and check B out;
#   - deltaroot: publish A as 1 and B as 2 to a deltaroot-server on loopback, install 1 on a
#     device folder, update it to 2, and count the bytes the server served: objects, deltas
#     and packs, and the metadata (check answer, manifest or manifest delta and signature,
#     plan), with what a device would fetch of the manifest whole and the JSON plan beside;
#   - deltaroot, --prefer bytes: the same full run (publish, install 1, update to 2, bytes
#     served) on a second server of its own, so that nothing of the first run is reused, with
#     the device's policy set to the fewest bytes (the default, auto, takes the whole object
#     instead of a delta slow to rebuild when the link it measured makes that faster);
#   - deltaroot per method: B published from A with one delta method alone (objects always).
# Writes bench/results/trees.md, trees.tsv and trees.svg.
#
#   bench/trees.sh                  # builds the corpus first if it is missing
#   TREES=small bench/trees.sh      # one tree only
#   PER_METHOD=0 bench/trees.sh     # skip the one-method runs
#   BYTES_RUN=0 bench/trees.sh      # skip the --prefer bytes run
#   MEMORY_MIB=2048                 # the publisher's memory budget (--memory-mib)
#   APPLY_REPS=3                    # applies timed per run; the median is reported
#
# Every tool runs with malloc asking for transparent huge pages, as deploy/'s agent unit
# sets it (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; THP_MALLOC=0 to leave malloc alone): it
# speeds the xz method's encoder 1.4x (25.4 s -> 17.2 s for xz itself on the corpus kernel).
set -euo pipefail
if [ "${THP_MALLOC:-1}" = 1 ]; then export GLIBC_TUNABLES=glibc.malloc.hugetlb=1; fi
here=$(cd "$(dirname "$0")/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
TREES=${TREES:-small kernel}
PER_METHOD=${PER_METHOD:-1}
BYTES_RUN=${BYTES_RUN:-1}
MEMORY_MIB=${MEMORY_MIB:-2048}
APPLY_REPS=${APPLY_REPS:-3}
for t in $TREES; do
  if [ ! -d "$CORPUS_DIR/trees/$t/B" ]; then
    CORPUS_DIR=$CORPUS_DIR bash "$here/../shared/corpus.sh"
    break
  fi
done
need=()
command -v ostree >/dev/null || need+=(ostree)
command -v zstd >/dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" ||
    { echo "needs Debian's ${need[*]} (apt-get install ${need[*]})" >&2; exit 1; }
fi
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin=$here/target/release
work=$(mktemp -d /var/tmp/deltaroot-trees.XXXXXX)
server_pids=
trap 'kill $server_pids 2>/dev/null || true; rm -rf "$work"' EXIT
out=$work/out
mkdir -p "$out"

# timed NAME CMD... : wall seconds and peak RSS (KiB) of CMD into $out/NAME.time
timed() { /usr/bin/time -f '%e %M' -o "$out/$1.time" "${@:2}"; }
# Applies are timed APPLY_REPS times, each on a device freshly set up at A in a folder of its own,
# and nothing is deleted in the six minutes before a timed apply (`settle`), as nothing is on a
# device about to update: on an ext4 without a journal (this machine's), an inode freed less
# than 60 s ago (360 s while its inode table block is dirty) is skipped by every allocation
# that scans past it. Removing the previous run's device (8,000 inodes on trees/kernel) just
# before made every file the next apply created scan past all of them: deltaroot's kernel
# apply took 4.3 s that way instead of 2.5 s, OSTree's 4.0 s instead of 3.9 s. So a tree's
# devices and OSTree repositories are removed after its last timed apply, and each set of
# timed applies first waits out the last removal.
last_removal=0
settle() {
  local wait=$((last_removal + 360 - $(date +%s)))
  if [ "$wait" -gt 0 ]; then
    echo "   (waiting ${wait}s: inodes freed within six minutes slow this ext4's allocations)" >&2
    sleep "$wait"
  fi
}
removed() { last_removal=$(date +%s); }
# median TREE NAME: NAME.time becomes the median seconds (and the largest peak) of the
# NAME~I.time runs, which are recorded as TREE reps_NAME.
median() {
  python3 - "$out" "$1" "$2" >>"$out/values.tsv" <<'PY'
import glob, os, sys
out, tree, name = sys.argv[1:]
files = sorted(glob.glob(f"{out}/{tree}-{name}~*.time"))
runs = [tuple(map(float, open(f).read().split())) for f in files]
secs = sorted(r[0] for r in runs)
mid = secs[len(secs) // 2] if len(secs) % 2 else (secs[len(secs) // 2 - 1] + secs[len(secs) // 2]) / 2
open(f"{out}/{tree}-{name}.time", "w").write(f"{mid:.2f} {max(int(r[1]) for r in runs)}\n")
for f in files:
    os.remove(f)
print(f"{tree}\treps_{name}\t{' '.join(f'{r[0]:.2f}' for r in runs)}")
PY
}
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$out/values.tsv"; } # tree key value
# chosen TREE REPORT PREFIX: contents and bytes per method of the downloads in a --report TSV
chosen() {
  python3 - "$2" "$1" "$3" >>"$out/values.tsv" <<'PY'
import csv, sys
by = {}
for r in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    c = by.setdefault(r["method"], [0, 0])
    c[0] += 1
    c[1] += int(r["bytes"])
for m, (n, b) in sorted(by.items()):
    print(f"{sys.argv[2]}\t{sys.argv[3]}chosen_{m}\t{n} {b}")
PY
}

"$bin/deltaroot" keygen --out "$work/release" >/dev/null
# serve DATA: a deltaroot-server on loopback over the folder DATA; sets $url and $token for it.
serve() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  url=http://127.0.0.1:$port
  token=$("$bin/deltaroot-server" token create bench --data "$1")
  "$bin/deltaroot-server" serve --plain-http --listen "127.0.0.1:$port" --data "$1" 2>"$1.log" &
  server_pids="$server_pids $!"
  for _ in $(seq 50); do curl -fs "$url/healthz" >/dev/null && break; sleep 0.1; done
}
# served URL: the bytes of objects, deltas and packs the server at URL has served so far.
served() { curl -fs "$1/metrics" | awk '/^deltaroot_served_bytes_total/ {s += $2} END {printf "%d\n", s}'; }
# metadata URL: the bytes of manifests, plans and check answers it has served so far, by kind
# (manifest plan check).
metadata() {
  curl -fs "$1/metrics" | awk -F'[{}" ]+' '/^deltaroot_served_metadata_bytes_total/ {m[$3] = $4}
    END {printf "%d %d %d\n", m["manifest"], m["plan"], m["check"]}'
}
# dr_run TREE URL TOKEN NAME KEYS CHOSEN [ARG...]: publish A as 1, then B as 2 with ARGs, to the
# server at URL; install 1 on a device folder and update it to 2. Times NAME-publish-a,
# NAME-publish and NAME-apply; records KEYS{dr_,}bytes (served by the server during the update)
# and the publisher's promise, and the methods chosen (keys CHOSENchosen_METHOD); keeps the
# --report as TREE-NAME-report.tsv (TREE-report.tsv for NAME dr).
dr_run() {
  local t=$1 url=$2 token=$3 name=$4 keys=$5 picked=$6 before after
  shift 6
  local pub=("$bin/deltaroot" publish --product "$t" --key "$work/release.key" --server "$url" --token "$token"
    --memory-mib "$MEMORY_MIB" --quiet --json)
  timed "$t-$name-publish-a" "${pub[@]}" "$A" --version 1 >"$w/$name-pub1.json"
  sync
  timed "$t-$name-publish" "${pub[@]}" "$@" "$A" "$B" --from-version 1 --version 2 \
    --report "$w/$name-report.tsv" >"$w/$name-pub2.json"
  # The agent's options but its root: each rep's device has a folder of its own.
  local opts=(--server "$url" --product "$t" --trust "$work/release.pub" --json ${PREFER:+--prefer "$PREFER"})
  local i m0 p0 c0 m1 p1 c1
  settle
  for i in $(seq "$APPLY_REPS"); do
    local agent=("$bin/deltaroot-agent" --root "$w/device-$i" "${opts[@]}")
    "${agent[@]}" install 1 >/dev/null
    before=$(served "$url")
    read -r m0 p0 c0 <<<"$(metadata "$url")"
    sync
    timed "$t-$name-apply~$i" "${agent[@]}" update >"$w/$name-update.json"
    after=$(served "$url")
    read -r m1 p1 c1 <<<"$(metadata "$url")"
  done
  median "$t" "$name-apply"
  record "$t" "${keys}bytes" "$((after - before))"
  record "$t" "${keys}meta" "$((m1 - m0)) $((p1 - p0)) $((c1 - c0))"
  # What an agent that asks for neither the manifest delta nor the binary plan fetches.
  local whole json
  whole=$(curl -fs "$url/v1/products/$t/releases/2/manifest" | wc -c)
  json=$(curl -fs "$url/v1/products/$t/plans/1/2" | wc -c)
  record "$t" "${keys}meta_whole" "$((whole + 64)) $json"
  record "$t" "${keys}promised" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["download_bytes"])' "$w/$name-pub2.json")"
  chosen "$t" "$w/$name-report.tsv" "$picked"
  if [ "$name" = dr ]; then cp "$w/$name-report.tsv" "$out/$t-report.tsv"; else cp "$w/$name-report.tsv" "$out/$t-$name-report.tsv"; fi
}
if [ "$BYTES_RUN" = 1 ]; then
  serve "$work/data-bytes"
  bytes_url=$url bytes_token=$token
fi
serve "$work/data"

for t in $TREES; do
  A=$CORPUS_DIR/trees/$t/A
  B=$CORPUS_DIR/trees/$t/B
  w=$work/$t
  mkdir -p "$w"
  sync
  echo "== $t: full image" >&2
  timed "$t-full" sh -c "tar -C '$B' -cf - . | zstd -19 -T0 -q -o '$w/full.tar.zst'"
  record "$t" full_bytes "$(stat -c %s "$w/full.tar.zst")"
  record "$t" image_bytes "$(du -sb --apparent-size "$B" | cut -f1)"
  rm -f "$w/full.tar.zst"

  echo "== $t: OSTree" >&2
  repo=$w/ostree-repo
  ostree --repo="$repo" init --mode=archive
  timed "$t-ostree-commit-a" ostree --repo="$repo" commit -b "$t" --tree=dir="$A" --no-xattrs -s A >/dev/null
  timed "$t-ostree-commit-b" ostree --repo="$repo" commit -b "$t" --tree=dir="$B" --no-xattrs -s B >/dev/null
  timed "$t-ostree-delta" ostree --repo="$repo" static-delta generate --from="$t^" --to="$t" \
    --inline --filename="$w/ostree.delta" >/dev/null
  record "$t" ostree_bytes "$(stat -c %s "$w/ostree.delta")"
  dev=$w/ostree-device
  bcommit=$(ostree --repo="$repo" rev-parse "$t")
  settle
  for i in $(seq "$APPLY_REPS"); do
    ostree --repo="$dev-$i" init --mode=bare-user
    ostree --repo="$dev-$i" pull-local "$repo" "$(ostree --repo="$repo" rev-parse "$t^")" >/dev/null
    sync
    timed "$t-ostree-apply~$i" sh -c "ostree --repo='$dev-$i' static-delta apply-offline '$w/ostree.delta' &&
      ostree --repo='$dev-$i' checkout -U '$bcommit' '$w/ostree-deploy-$i'"
  done
  median "$t" ostree-apply

  echo "== $t: deltaroot" >&2
  dr_run "$t" "$url" "$token" dr dr_ ""
  record "$t" dr_unpacked "$(python3 -c 'import json,sys; j = json.load(open(sys.argv[1])); print(j["unpacked_bytes"], j["packs"], j["packed"])' "$w/dr-pub2.json")"

  if [ "$BYTES_RUN" = 1 ]; then
    echo "== $t: deltaroot, --prefer bytes" >&2
    # The same steps on the second server, the device taking the fewest bytes.
    PREFER=bytes dr_run "$t" "$bytes_url" "$bytes_token" dr-bytes bytes_ bytes_
  fi
  # The tree's last timed apply is done: its devices and OSTree repositories go.
  rm -rf "$w"/device-* "$repo" "$dev"-* "$w"/ostree-deploy-* "$w/ostree.delta"
  removed

  if [ "$PER_METHOD" = 1 ]; then
    # Release 1 in a folder of its own (its objects are stored already), whose release
    # files each one-method run starts from: B is published as 2 from 1.
    rm -rf "$w/base"
    mkdir -p "$w/base"
    cp -al "$work/data/store/objects" "$w/base/objects"
    "$bin/deltaroot" publish --product "$t" --key "$work/release.key" --out "$w/base" \
      --quiet --json --version 1 "$A" >/dev/null
    for m in zstd zstd-patch-from bsdiff elf gzip xz bitcode; do
      echo "== $t: deltaroot, $m alone" >&2
      # The objects are stored already (hardlinked from the server's folder), so each run
      # encodes only its deltas; its summary says what a device would download. Whole files
      # alone are compressed afresh, all at the update level.
      rm -rf "$w/only"
      mkdir -p "$w/only"
      [ "$m" = zstd ] || cp -al "$work/data/store/objects" "$w/only/objects"
      cp -a "$w/base/v1" "$w/only/v1"
      timed "$t-only-$m" "$bin/deltaroot" publish --product "$t" --key "$work/release.key" --out "$w/only" \
        --memory-mib "$MEMORY_MIB" --quiet --json --method "$m" "$A" "$B" --from-version 1 --version 2 >"$w/only.json"
      record "$t" "only_$m" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["download_bytes"])' "$w/only.json")"
    done
    rm -rf "$w/only" "$w/base"
    removed
  fi
done

for f in "$out"/*.time; do
  n=$(basename "$f" .time)
  read -r secs kib <"$f"
  printf '%s\t%s\t%s\n' "${n%%-*}" "time_${n#*-}" "$secs $kib" >>"$out/values.tsv"
done
cp "$out/values.tsv" "$here/bench/results/trees.tsv"
python3 "$here/bench/trees_report.py" "$here/bench/results/trees.tsv" "$here/bench/results/trees.md" "$here/bench/results/trees.svg"
cat "$here/bench/results/trees.md"
