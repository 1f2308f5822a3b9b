#!/usr/bin/env bash
# Dashboard page benchmark: the time of each /ui/ page over a large product, on SQLite and/or
# PostgreSQL, loopback, release build.
#
#   bench/dashboard.sh [--backend sqlite|postgres|both]     (default: sqlite)
#
# The data, for one product `bench` (sizes from the environment, defaults in brackets):
#  - RELEASES [1000] real releases, each published by `deltaroot publish` to the running server
#    with --from-version the previous one (a small tree of 4 files, one changed per release),
#    so manifests, signatures, plans, deltas, channels and their audit rows are the server's
#    own; the pages re-verify manifests, so copied rows would not do;
#  - CHECKINS [1000000] update checks through the HTTP check route (wrk, 2 threads, 32
#    connections), over DEVICES [100000] device ids, each device CHECKINS/DEVICES times, on the
#    channels stable (9 in 10 devices) and beta, running one of the 20 newest releases, 3 % of
#    them reporting a failed attempt at the newest and 1 % a rollback: the server's check-in
#    writer makes the `devices` rows and today's `version_days`;
#  - what one run cannot make, written by bench/dashboard_seed.py in SQL: `version_days` and
#    `served_days` for the 399 days before today, and AUDIT [3000] audit rows before the
#    server's own.
# Then, signed in as an admin through /ui/login, each page is asked WARMUP [10] times, then
# REQUESTS [200] times (at most MAX_SECS [60] s a page) on one kept-alive connection
# (bench/dashboard_pages.py). The pages are not in the server's per-route latency histogram
# (it covers the API routes), so the figures are client-side: from sending the request to its
# last byte, an upper bound of the server's time.
#
# PostgreSQL comes from .ci/services (DELTAROOT_SERVICES_DIR=/tmp/svc-bench, port 24432; its S3
# server, moto, on 24433), stopped afterwards if this script started it.
# Writes bench/results/dashboard-<backend>.json and bench/results/dashboard.md (from every
# backend's last JSON, with bench/results/dashboard-notes.md). Needs wrk, curl, python3 (and psql for PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=sqlite
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    --backend=*) BACKEND=${1#*=}; shift ;;
    *) echo "usage: bench/dashboard.sh [--backend sqlite|postgres|both]" >&2; exit 2 ;;
  esac
done
case "$BACKEND" in sqlite) backends=(sqlite) ;; postgres) backends=(postgres) ;; both) backends=(sqlite postgres) ;;
  *) echo "--backend: sqlite, postgres or both" >&2; exit 2 ;; esac
RELEASES=${RELEASES:-1000}
DEVICES=${DEVICES:-100000}
CHECKINS=${CHECKINS:-1000000}
AUDIT=${AUDIT:-3000}
THREADS=${THREADS:-2}  # deltaroot-server worker threads
export REQUESTS=${REQUESTS:-200} WARMUP=${WARMUP:-10} MAX_SECS=${MAX_SECS:-60}
for t in wrk curl python3; do
  command -v "$t" >/dev/null || { echo "dashboard.sh needs $t (apt-get install wrk curl python3)" >&2; exit 1; }
done
if [ -n "${BIN:-}" ]; then
  bin=$(realpath "$BIN")  # binaries built elsewhere (a trial with small sizes on a debug build)
else
  target=${CARGO_TARGET_DIR:-target}
  cargo build --release -q -p deltaroot-server -p deltaroot-publisher
  bin=$(realpath "$target/release")
fi
work=$(mktemp -d /tmp/deltaroot-dashboard.XXXXXX)
export DELTAROOT_SERVICES_DIR=${DELTAROOT_SERVICES_DIR:-/tmp/svc-bench}
export DELTAROOT_PG_PORT=${DELTAROOT_PG_PORT:-24432} DELTAROOT_S3_PORT=${DELTAROOT_S3_PORT:-24433}
pid=
started_services=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$started_services" ] && .ci/services stop || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so that an interrupted run cleans up too
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
metric() { curl -sf "$url/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
pg_up() { psql -q "postgres://postgres@127.0.0.1:$DELTAROOT_PG_PORT/postgres" -c "SELECT 1" >/dev/null 2>&1; }
secs() { python3 -c 'import time; print(f"{time.time():.1f}")'; }

"$bin/deltaroot" keygen --out "$work/release" >/dev/null
echo "a long enough benchmark password" >"$work/password"

# The release trees: 4 files; release i changes etc/version and one 16 KiB file in place.
mk_tree() { # dir, i
  local d=$1 i=$2
  rm -rf "$d"; mkdir -p "$d/etc" "$d/usr/bin"
  echo "1.0.$i" >"$d/etc/version"
  python3 - "$d" "$i" <<'PY'
import random, sys
d, i = sys.argv[1], int(sys.argv[2])
base = random.Random(7)
blob = bytearray(base.randbytes(16384))
r = random.Random(i)
for _ in range(8):
    k = r.randrange(len(blob) - 64); blob[k:k + 64] = r.randbytes(64)
open(f"{d}/usr/bin/app", "wb").write(bytes(blob))
open(f"{d}/etc/app.conf", "w").write("".join(f"key{k} = {k * 7}\n" for k in range(200)))
open(f"{d}/etc/motd", "w").write(f"release {i}\n" * (1 + i % 5))
PY
}

start_server() { # log name
  port_=$(port)
  "$bin/deltaroot-server" serve --plain-http --listen "127.0.0.1:$port_" "${store[@]}" \
    --threads "$THREADS" 2>>"$work/$1.log" &
  pid=$!
  url=http://127.0.0.1:$port_
  wait_up "$url/healthz"
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

run_backend() { # sqlite | postgres
  local b=$1 dsn="" t0
  mkdir -p "$work/$b"
  if [ "$b" = postgres ]; then
    command -v psql >/dev/null || { echo "PostgreSQL needs psql (apt-get install postgresql)" >&2; exit 1; }
    if ! pg_up; then started_services=1; fi
    # Its S3 server (moto) is not needed here; PostgreSQL alone is enough if moto is missing.
    .ci/services >/dev/null 2>"$work/services.log" || pg_up \
      || { cat "$work/services.log" >&2; exit 1; }
    local admin=postgres://postgres@127.0.0.1:$DELTAROOT_PG_PORT/postgres
    psql -q "$admin" -c "DROP DATABASE IF EXISTS deltaroot_dashboard_bench" -c "CREATE DATABASE deltaroot_dashboard_bench" >/dev/null
    dsn=postgres://postgres@127.0.0.1:$DELTAROOT_PG_PORT/deltaroot_dashboard_bench
    store=(--data "$work/$b/data" --database "$dsn")
  else
    store=(--data "$work/$b/data")
  fi
  echo "== $b: schema, token, admin user, $AUDIT older audit rows" >&2
  start_server "$b-server"   # creates the schema
  local token
  token=$("$bin/deltaroot-server" token create bench "${store[@]}")
  "$bin/deltaroot-server" user add admin --role admin --password-file "$work/password" "${store[@]}" >/dev/null
  if [ "$b" = sqlite ]; then seed_target=$work/$b/data/deltaroot.db; else seed_target=$dsn; fi
  python3 bench/dashboard_seed.py audit "$b" "$seed_target" bench "$RELEASES" "$DEVICES" "$AUDIT"

  echo "== $b: publishing $RELEASES releases" >&2
  local pub=("$bin/deltaroot" publish --product bench --key "$work/release.key" --server "$url"
    --token "$token" --level 3 --quiet)
  t0=$(secs)
  mk_tree "$work/tree-a" 1
  "${pub[@]}" --version 1.0.1 "$work/tree-a" >/dev/null
  local i prev=tree-a cur=tree-b
  for i in $(seq 2 "$RELEASES"); do
    mk_tree "$work/$cur" "$i"
    if [ "$i" = "$RELEASES" ]; then
      # The newest goes to a quarter of stable at first; beta gets it whole.
      "${pub[@]}" --version "1.0.$i" --from-version "1.0.$((i - 1))" --percent 25 "$work/$prev" "$work/$cur" >/dev/null
    else
      "${pub[@]}" --version "1.0.$i" --from-version "1.0.$((i - 1))" "$work/$prev" "$work/$cur" >/dev/null
    fi
    [ $((i % 100)) = 0 ] && echo "   $i releases, $(python3 -c "print(f'{$(secs) - $t0:.0f}')") s" >&2
    local x=$prev; prev=$cur; cur=$x
  done
  local publish_secs
  publish_secs=$(python3 -c "print(f'{$(secs) - $t0:.0f}')")
  "$bin/deltaroot-server" promote --server "$url" --token "$token" --product bench --channel beta "1.0.$RELEASES" >/dev/null

  echo "== $b: $CHECKINS check-ins over $DEVICES devices (wrk)" >&2
  cat >"$work/checks.lua" <<LUA
local nthreads, made = 0, 0
function setup(thread) thread:set("tid", nthreads); nthreads = nthreads + 1 end
function init(args) n = 0; per_thread = math.ceil($CHECKINS / 2) end
function request()
  local k = n * 2 + tid
  n = n + 1
  local id = k % $DEVICES
  -- One of the 20 newest releases, the newer the likelier (the same for a device every time).
  local x = ((id * 2654435761) % 1000) / 1000
  local v = $RELEASES - math.floor(20 * x * x)
  if v < 1 then v = 1 end
  local cur = "1.0." .. v
  local ch = (id % 10 == 0) and "beta" or "stable"
  local q
  if id % 100 < 3 then q = "&result=failed&attempted=1.0.$RELEASES"
  elseif id % 100 == 3 then q = "&result=rolled-back&attempted=1.0.$RELEASES"
  else q = "&result=ok&attempted=" .. cur end
  return wrk.format("GET", "/v1/products/bench/channels/" .. ch .. "/check?device=dev-" .. id .. "&current=" .. cur .. q)
end
function response(status, headers, body)
  if n >= per_thread then wrk.thread:stop() end
end
LUA
  local before after dropped_before dropped_after
  before=$(metric deltaroot_checkins_written_total); dropped_before=$(metric deltaroot_checkins_dropped_total)
  t0=$(secs)
  # Each wrk thread stops asking after its share; wrk itself waits for -d, so it is
  # interrupted (it then prints its summary) once the server has answered every check.
  local checks0 wrkpid
  checks0=$(metric deltaroot_update_checks_total)
  wrk -t2 -c32 -d1200s --latency -s "$work/checks.lua" "$url/" >"$work/$b-wrk.txt" 2>&1 &
  wrkpid=$!
  local done_=0 last=-1 still=0
  while kill -0 "$wrkpid" 2>/dev/null; do
    done_=$(( $(metric deltaroot_update_checks_total) - checks0 ))
    [ "$done_" -ge "$CHECKINS" ] && break
    # wrk's threads stopped short (answers lost to a closed connection): no progress for 5 s.
    if [ "$done_" = "$last" ]; then still=$((still + 1)); [ "$still" -ge 10 ] && break; else still=0; fi
    last=$done_
    sleep 0.5
  done
  sleep 0.5
  kill -INT "$wrkpid" 2>/dev/null || true
  wait "$wrkpid" || true
  local checkin_secs
  checkin_secs=$(python3 -c "print(f'{$(secs) - $t0:.0f}')")
  sleep 3  # the check-in writer's last batch
  after=$(metric deltaroot_checkins_written_total); dropped_after=$(metric deltaroot_checkins_dropped_total)
  grep -E "requests in|Requests/sec|Non-2xx" "$work/$b-wrk.txt" >&2 || true
  stop_server

  echo "== $b: 399 days of daily rollups" >&2
  python3 bench/dashboard_seed.py days "$b" "$seed_target" bench "$RELEASES" "$DEVICES" "$AUDIT"
  local counts
  local countsql="SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM releases), (SELECT COUNT(*) FROM plans), (SELECT COUNT(*) FROM version_days), (SELECT COUNT(*) FROM served_days), (SELECT COUNT(*) FROM audit)"
  if [ "$b" = sqlite ]; then
    counts=$(python3 -c "import sqlite3,sys; print(' '.join(map(str, sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone())))" "$seed_target" "$countsql")
  else
    counts=$(psql -tA -F' ' "$dsn" -c "$countsql")
  fi

  echo "== $b: pages (signed in as admin)" >&2
  start_server "$b-server"
  local load_before load_after
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  python3 bench/dashboard_pages.py "$url" admin "$work/password" bench "1.0.$RELEASES" "$work/$b.json"
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  stop_server
  python3 - "$work/$b.json" "$b" "$publish_secs" "$checkin_secs" "$((after - before))" "$((dropped_after - dropped_before))" \
    "$counts" "$load_before" "$load_after" "$AUDIT" "$(grep -E 'requests in' "$work/$b-wrk.txt" | xargs)" <<'PY'
import json, sys
f, b = sys.argv[1], sys.argv[2]
d = json.load(open(f))
meta = dict(zip(["backend", "publish_secs", "checkin_secs", "checkins_written", "checkins_dropped",
                 "counts", "load_before", "load_after", "audit_seeded", "wrk"], sys.argv[2:]))
import datetime
meta["taken"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
json.dump({"meta": meta, "pages": d}, open(f, "w"), indent=1)
PY
  mv "$work/$b.json" "$work/result-$b.json"
}

for b in "${backends[@]}"; do run_backend "$b"; done

mkdir -p bench/results
for b in "${backends[@]}"; do cp "$work/result-$b.json" "bench/results/dashboard-$b.json"; done
# Every backend measured so far (a run on one backend keeps the other's last figures).
python3 bench/dashboard_report.py bench/results >bench/results/dashboard.md
cat bench/results/dashboard.md
