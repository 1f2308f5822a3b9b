#!/usr/bin/env bash
# Load benchmark, loopback only, about two minutes after the build: deltaroot-server over
# HTTPS next to Debian's nginx serving the same files from disk with the same certificate,
# both measured in this one run by the same client (wrk, 2 threads) on this machine.
#
#  1. update checks: 256 connections, each request a different device id (so every check is
#     a recorded check-in), against a channel with a 50 % staged rollout, on SQLite;
#     reference: nginx serving a small static file of the same size as a check answer, asked
#     for with the checks' requests (the same Lua in wrk), and with one fixed path beside it;
#  2. object downloads: 16 connections fetching a 64 MiB object; reference: nginx, same file;
#  3. the update checks of 1. against a second server on PostgreSQL (Debian's, started by
#     .ci/services on a port of its own and stopped after);
#  4. a fleet: 1,000,000 devices, each id once, checking in over PostgreSQL at full rate
#     until the devices table holds them all (or FLEET_SECS pass): the check-ins written per
#     second, the server's peak RSS and the database's bytes per device.
#
# Writes bench/results/load.md and load.svg. Needs nginx, wrk, openssl, curl (apt-get install nginx wrk).
# Targets: checks/s >= 1.0 x nginx's small-file requests/s on SQLite and >= 0.8 x on
# PostgreSQL, p99 < 10 ms on both; object throughput >= 0.9 x nginx's. LOAD_PG=0 skips 3-4.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-256}
THREADS=${THREADS:-2}  # deltaroot-server worker threads
LOAD_PG=${LOAD_PG:-1}
FLEET=${FLEET:-1000000}
FLEET_SECS=${FLEET_SECS:-900}
for t in nginx wrk openssl curl; do
  command -v "$t" >/dev/null || { echo "load.sh needs $t (apt-get install nginx wrk openssl curl)" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p deltaroot-server -p deltaroot-publisher
bin=$target/release
work=$(mktemp -d /tmp/deltaroot-load.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -d "$work/services" ] && DELTAROOT_SERVICES_DIR=$work/services bash .ci/services stop || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 100); do curl -skf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

# --- state: two releases of a small tree plus one 64 MiB incompressible file ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir -p "$work/v1/etc" "$work/v2/etc" "$work/data"
for v in 1 2; do
  for i in $(seq 1 50); do echo "file $i of release $v" >"$work/v$v/etc/f$i"; done
done
head -c $((64 << 20)) /dev/urandom >"$work/v2/etc/big.bin"
"$bin/deltaroot" keygen --out "$work/release" >/dev/null
token=$("$bin/deltaroot-server" token create bench --data "$work/data")
p=$(port)
"$bin/deltaroot-server" serve --plain-http --listen "127.0.0.1:$p" --data "$work/data" 2>"$work/publish-server.log" &
pid=$!; wait_up "http://127.0.0.1:$p/healthz"
pub=("$bin/deltaroot" publish --product bench --key "$work/release.key" --server "http://127.0.0.1:$p" --token "$token" --level 3 --quiet --json)
"${pub[@]}" --version 1.0 --channel ci "$work/v1" >/dev/null
"${pub[@]}" --version 2.0 --from-version 1.0 --channel ci "$work/v1" "$work/v2" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true

# --- deltaroot-server over HTTPS, SQLite ---
dp=$(port)
"$bin/deltaroot-server" serve --listen "127.0.0.1:$dp" --data "$work/data" \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --threads "$THREADS" 2>"$work/server.log" &
dpid=$!
pids+=($dpid)
url=https://127.0.0.1:$dp
wait_up "$url/healthz"
op() { "$bin/deltaroot-server" "$@" --server "$url" --token "$token" --ca-cert "$work/cert.pem" --product bench; }
op promote --channel stable 1.0 >/dev/null
op promote --channel stable 2.0 --percent 50 >/dev/null
big=$(curl -sk --cacert "$work/cert.pem" "$url/v1/products/bench/plans/1.0/2.0" \
  | python3 -c 'import json,sys; p=json.load(sys.stdin); print(max(p["items"], key=lambda i: i["size"])["target"])')
obj=objects/${big:0:2}/$big
sample=$(curl -sk "$url/v1/products/bench/channels/stable/check?device=dev-1&current=1.0&result=ok&attempted=1.0")

# --- nginx over HTTPS: the same object folder, a small file as large as a check answer ---
np=$(port)
mkdir -p "$work/nginx/tmp"
printf '%s' "$sample" >"$work/data/store/small.json"
# nginx's workers run as an unprivileged user when started by root: let them read the store.
chmod -R a+rX "$work"
cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp; uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  server {
    listen 127.0.0.1:$np ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    root $work/data/store;
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work/nginx"
nurl=https://127.0.0.1:$np
wait_up "$nurl/small.json" || { cat "$work/nginx-error.log" >&2; exit 1; }

# checks_lua PATH: a wrk script asking for PATH with each check's query (a random device id of
# a million, its current version and last result). deltaroot's checks use it, and so does
# nginx's small file (which ignores the query): the same Lua work in wrk per request, so that
# the client, on the same 2 cores, takes as much from nginx as from deltaroot-server.
checks_lua() {
  cat <<LUA
request = function()
  local id = math.random(1, 1000000)
  local cur = (id % 4 == 0) and "2.0" or "1.0"
  return wrk.format("GET", "$1?device=dev-" .. id ..
    "&current=" .. cur .. "&result=ok&attempted=" .. cur)
end
LUA
}
checks_lua /v1/products/bench/channels/stable/check >"$work/checks.lua"
checks_lua /small.json >"$work/nginx.lua"

# The same checks without a device id: nothing is recorded, which shows what recording costs.
cat >"$work/anon.lua" <<'LUA'
request = function()
  local cur = (math.random(1, 4) == 1) and "2.0" or "1.0"
  return wrk.format("GET", "/v1/products/bench/channels/stable/check?current=" .. cur)
end
LUA

# The CPU time (clock ticks) the processes PID... and their descendants have used so far: what a
# server spends per request is read from /proc around each run, not guessed from throughput.
family() { local p; for p in "$@"; do echo "$p"; family $(pgrep -P "$p" || true); done; }
ticks() {
  local t=0 p
  for p in $(family "$@"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
serving=() # the PIDs whose CPU a run charges to the server: set before each run
run() { # name, then wrk arguments; prints the wrk output to $work/$name.txt
  local name=$1; shift
  local t0; t0=$(ticks "${serving[@]}")
  # `times` in the same shell: wrk's own CPU (user and system, its second line).
  bash -c 'wrk "$@"; times' wrk -t2 -d"$DURATION" --latency "$@" >"$work/$name.txt" 2>&1
  echo "$(( $(ticks "${serving[@]}") - t0 ))" >"$work/$name.ticks"
  cat "$work/$name.txt" >&2
}
serving=("$(cat "$work/nginx.pid")")
echo "== nginx: small file, $CONNS connections" >&2
run nginx-small -c"$CONNS" "$nurl/small.json"
echo "== nginx: small file, checks.lua's requests, $CONNS connections" >&2
run nginx-lua -c"$CONNS" -s "$work/nginx.lua" "$nurl/"
serving=("$dpid")
echo "== deltaroot: update checks, $CONNS connections" >&2
before=$(curl -sk "$url/metrics")
run dr-checks -c"$CONNS" -s "$work/checks.lua" "$url/"
sleep 1
after=$(curl -sk "$url/metrics")
echo "== deltaroot: update checks without a device id, $CONNS connections" >&2
run dr-checks-anon -c"$CONNS" -s "$work/anon.lua" "$url/"
echo "== nginx: 64 MiB object, 16 connections" >&2
serving=("$(cat "$work/nginx.pid")")
run nginx-object -c16 --timeout 30s "$nurl/$obj"
echo "== deltaroot: 64 MiB object, 16 connections" >&2
serving=("$dpid")
run dr-object -c16 --timeout 30s "$url/$obj"

metric() { awk -v m="$1" '$1 == m {print $2}' <<<"$2"; }
export CHECKINS_WRITTEN=$(( $(metric deltaroot_checkins_written_total "$after") - $(metric deltaroot_checkins_written_total "$before") ))
export CHECKINS_DROPPED=$(( $(metric deltaroot_checkins_dropped_total "$after") - $(metric deltaroot_checkins_dropped_total "$before") ))
export DEVICES=$(python3 -c "import sqlite3; print(sqlite3.connect('$work/data/deltaroot.db').execute('select count(*) from devices').fetchone()[0])")

if [ "$LOAD_PG" = 1 ]; then
  # --- the same checks on PostgreSQL: the same releases published into it ---
  eval "$(DELTAROOT_SERVICES_DIR=$work/services DELTAROOT_PG_PORT=$(port) DELTAROOT_S3_PORT=$(port) bash .ci/services)"
  pg=$DELTAROOT_TEST_POSTGRES
  pgtoken=$("$bin/deltaroot-server" token create bench --data "$work/data-pg" --database "$pg")
  gp=$(port)
  "$bin/deltaroot-server" serve --listen "127.0.0.1:$gp" --data "$work/data-pg" --database "$pg" \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --threads "$THREADS" 2>"$work/server-pg.log" &
  pgpid=$!
  pids+=($pgpid)
  gurl=https://127.0.0.1:$gp
  wait_up "$gurl/healthz"
  gpub=("$bin/deltaroot" publish --product bench --key "$work/release.key" --server "$gurl" --token "$pgtoken"
    --ca-cert "$work/cert.pem" --level 3 --quiet --json)
  "${gpub[@]}" --version 1.0 --channel ci "$work/v1" >/dev/null
  "${gpub[@]}" --version 2.0 --from-version 1.0 --channel ci "$work/v1" "$work/v2" >/dev/null
  gop() { "$bin/deltaroot-server" "$@" --server "$gurl" --token "$pgtoken" --ca-cert "$work/cert.pem" --product bench; }
  gop promote --channel stable 1.0 >/dev/null
  gop promote --channel stable 2.0 --percent 50 >/dev/null
  serving=("$pgpid" "$(head -1 "$work/services/pg/postmaster.pid")")
  echo "== deltaroot on PostgreSQL: update checks, $CONNS connections" >&2
  run dr-checks-pg -c"$CONNS" -s "$work/checks.lua" "$gurl/"
  sleep 1
  # --- a fleet: every device id once, until the table holds them all ---
  psql "$pg" -qc "DELETE FROM devices" >/dev/null
  cat >"$work/fleet.lua" <<LUA
local threads = {}
setup = function(thread)
  thread:set("first", #threads + 1)
  table.insert(threads, thread)
end
init = function(args)
  n = 0
  step = 2
end
request = function()
  local id = (first + n * step - 1) % $FLEET + 1
  n = n + 1
  return wrk.format("GET", "/v1/products/bench/channels/stable/check?device=fleet-" .. id ..
    "&current=1.0&result=ok&attempted=1.0")
end
LUA
  gm0=$(curl -sk "$gurl/metrics")
  echo "== deltaroot on PostgreSQL: a fleet of $FLEET devices checking in" >&2
  wrk -t2 -c"$CONNS" -d"${FLEET_SECS}s" --latency -s "$work/fleet.lua" "$gurl/" >"$work/fleet.txt" 2>&1 &
  wrkpid=$!
  start=$(date +%s.%N)
  devices=0
  while kill -0 "$wrkpid" 2>/dev/null; do
    sleep 2
    devices=$(psql "$pg" -tAc "SELECT count(*) FROM devices")
    [ "$devices" -ge "$FLEET" ] && break
  done
  end=$(date +%s.%N)
  kill -INT "$wrkpid" 2>/dev/null || true
  wait "$wrkpid" 2>/dev/null || true
  sleep 2
  gm1=$(curl -sk "$gurl/metrics")
  export FLEET_DEVICES=$(psql "$pg" -tAc "SELECT count(*) FROM devices")
  export FLEET_SECS_TAKEN=$(python3 -c "print(f'{$end - $start:.1f}')")
  export FLEET_WRITTEN=$(( $(metric deltaroot_checkins_written_total "$gm1") - $(metric deltaroot_checkins_written_total "$gm0") ))
  export FLEET_DROPPED=$(( $(metric deltaroot_checkins_dropped_total "$gm1") - $(metric deltaroot_checkins_dropped_total "$gm0") ))
  export FLEET_CHECKS=$(( $(metric deltaroot_update_checks_total "$gm1") - $(metric deltaroot_update_checks_total "$gm0") ))
  export FLEET_RSS_KIB=$(awk '/VmHWM/ {print $2}' "/proc/$pgpid/status")
  export FLEET_TABLE_BYTES=$(psql "$pg" -tAc "SELECT pg_total_relation_size('devices')")
  export FLEET_DB_BYTES=$(psql "$pg" -tAc "SELECT pg_database_size(current_database())")
  export FLEET
fi
export LOAD_PG
export SAMPLE="$sample" CONNS DURATION THREADS
mkdir -p bench/results
python3 - "$work" "$PWD/bench" >bench/results/load.md <<'PY'
import os, re, sys, subprocess, datetime
work = sys.argv[1]
def parse(name):
    t = open(f"{work}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    tr = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", t)
    mult = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[tr.group(2)]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
    ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[p99.group(2)]
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    sock = re.search(r"Socket errors: (.*)", t)
    n = int(re.search(r"(\d+) requests in", t).group(1))
    # CPU seconds: the serving processes' (from /proc), and wrk's (`times`, its children line).
    tck = os.sysconf("SC_CLK_TCK")
    served = int(open(f"{work}/{name}.ticks").read()) / tck if os.path.exists(f"{work}/{name}.ticks") else None
    secs = lambda m: int(m[0]) * 60 + float(m[1])
    tl = re.findall(r"^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$", t, re.M)
    client = secs(tl[-1][:2]) + secs(tl[-1][2:]) if tl else None
    return dict(rps=rps, bps=float(tr.group(1)) * mult, p99=ms, n=n,
                served_us=served * 1e6 / n if served is not None else None,
                client_us=client * 1e6 / n if client is not None else None,
                non2xx=int(errs.group(1)) if errs else 0, sock=sock.group(1) if sock else "none")
ns, nl, dc, no, do, da = (parse(n) for n in ["nginx-small", "nginx-lua", "dr-checks", "nginx-object", "dr-object", "dr-checks-anon"])
r_checks = dc["rps"] / nl["rps"]
r_obj = do["bps"] / no["bps"]
pg = os.environ.get("LOAD_PG") == "1"
dp = parse("dr-checks-pg") if pg else None
ok = lambda b: "**met**" if b else "**missed**"
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"""# Load benchmark (`bench/load.sh`)

Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), loopback,
everything on the same 2 cores: wrk (2 threads), deltaroot-server ({os.environ["THREADS"]} worker threads,
SQLite, and PostgreSQL 15 for the rows that say so, HTTPS with rustls), nginx 1.22 (2 workers,
HTTPS with OpenSSL, same certificate).
{os.environ['DURATION']} per run.

The reference for update checks is nginx serving a small static file of the size of a check
answer, asked for with the checks' own requests (`nginx.lua`: the Lua that makes each check's
query, so that wrk, on the same 2 cores, costs both servers the same); nginx asked for one
fixed path, wrk's cheapest request, is listed beside it.

| what | deltaroot-server | nginx (reference) | ratio | target |
|---|---|---|---|---|
| update checks/s, {os.environ['CONNS']} connections, SQLite | {dc['rps']:,.0f} | {nl['rps']:,.0f} | **{r_checks:.2f}** | ≥ 1.0: {ok(r_checks >= 1.0)} |
| p99 latency, same runs | {dc['p99']:.2f} ms | {nl['p99']:.2f} ms | | < 10 ms: {ok(dc['p99'] < 10)} |
| the same checks without a device id (nothing recorded: what recording costs) | {da['rps']:,.0f} | {nl['rps']:,.0f} | {da['rps'] / nl['rps']:.2f} | |
| p99 latency, same runs | {da['p99']:.2f} ms | {nl['p99']:.2f} ms | | |
| nginx asked for one fixed path (no Lua in wrk), against the recorded checks on SQLite | {dc['rps']:,.0f} | {ns['rps']:,.0f} | {dc['rps'] / ns['rps']:.2f} | |
| p99 latency, same runs | {dc['p99']:.2f} ms | {ns['p99']:.2f} ms | | |
""" + (f"""| update checks/s, {os.environ['CONNS']} connections, PostgreSQL | {dp['rps']:,.0f} | {nl['rps']:,.0f} | **{dp['rps'] / nl['rps']:.2f}** | ≥ 0.8: {ok(dp['rps'] / nl['rps'] >= 0.8)} |
| p99 latency, PostgreSQL | {dp['p99']:.2f} ms | {nl['p99']:.2f} ms | | < 10 ms: {ok(dp['p99'] < 10)} |
""" if pg else "") + f"""| object download throughput, 64 MiB object, 16 connections | {do['bps']/2**20:,.0f} MiB/s | {no['bps']/2**20:,.0f} MiB/s | **{r_obj:.2f}** | ≥ 0.9: {ok(r_obj >= 0.9)} |

CPU per request (µs: user and system time over requests answered, the server's processes
read from /proc before and after each run, PostgreSQL's with the server's in its row; wrk's
by `times`): what throughput on shared cores comes down to.

| run | server | wrk | requests |
|---|---:|---:|---:|
""" + "".join(f"| {label} | {r['served_us']:.1f} | {r['client_us']:.1f} | {r['n']:,} |\n"
              for label, r in [("nginx, small file, the checks' requests", nl),
                               ("deltaroot, update checks, SQLite", dc),
                               ("deltaroot, the same checks without a device id", da)]
              + ([("deltaroot, update checks, PostgreSQL (server + database)", dp)] if pg else [])) + f"""
Errors: checks non-2xx {dc['non2xx']}, socket errors {dc['sock']}; nginx small non-2xx
{ns['non2xx']} and {nl['non2xx']} with the checks' requests; objects non-2xx {do['non2xx']} / nginx {no['non2xx']}.

Check-ins: every check carried a random device id of 1 000 000 (`checks.lua`), a current
version and a last result; {int(os.environ['CHECKINS_WRITTEN']):,} were written to SQLite in batches during
the run and {int(os.environ['CHECKINS_DROPPED']):,} dropped from a full queue; the `devices` table then held
{int(os.environ['DEVICES']):,} devices. The channel had release 2.0 in a 50 % staged rollout
over 1.0, so each answer hashed the device id into the wave.

""" + (f"""## A fleet on PostgreSQL

{int(os.environ['FLEET']):,} simulated devices (`fleet.lua`: each id once, in turn, from 2 wrk threads and
{os.environ['CONNS']} connections at full rate), every check a check-in, on the PostgreSQL server above
(PostgreSQL on the same 2 cores):

| what | figure |
|---|---:|
| devices recorded | {int(os.environ['FLEET_DEVICES']):,} in {float(os.environ['FLEET_SECS_TAKEN']):,.1f} s |
| check-ins written per second, sustained | {int(os.environ['FLEET_WRITTEN']) / float(os.environ['FLEET_SECS_TAKEN']):,.0f} |
| checks answered per second | {int(os.environ['FLEET_CHECKS']) / float(os.environ['FLEET_SECS_TAKEN']):,.0f} |
| check-ins dropped from a full queue (answered, not recorded) | {int(os.environ['FLEET_DROPPED']):,} |
| server peak RSS | {int(os.environ['FLEET_RSS_KIB']) / 1024:,.0f} MiB |
| `devices` table with its indexes, per device | {int(os.environ['FLEET_TABLE_BYTES']) / max(1, int(os.environ['FLEET_DEVICES'])):,.0f} bytes |
| whole database | {int(os.environ['FLEET_DB_BYTES']) / 2**20:,.0f} MiB |

""" if pg else "") + f"""A check answer (nginx served a file of the same {len(os.environ['SAMPLE'])} bytes):

```json
{os.environ['SAMPLE']}
```

Raw wrk output:

""")
for n in ["nginx-small", "nginx-lua", "dr-checks", "dr-checks-anon", "nginx-object", "dr-object"] + (["dr-checks-pg", "fleet"] if pg else []):
    print(f"### {n}\n\n```\n{open(f'{work}/{n}.txt').read().strip()}\n```\n")

sys.path.insert(0, sys.argv[2])
import barchart
runs = [("nginx, small file", nl, barchart.PEER), ("deltaroot, SQLite", dc, barchart.DELTAROOT),
        ("deltaroot, nothing recorded", da, barchart.DELTAROOT_PALE)] + (
       [("deltaroot, PostgreSQL", dp, barchart.DELTAROOT_LIGHT)] if pg else [])
open(os.path.join(sys.argv[2], "results", "load.svg"), "w").write(barchart.svg(
    "Update checks on 2 shared cores (bench/load.sh)",
    [("checks answered per second", [(l, r["rps"], c) for l, r, c in runs]),
     ("server CPU per check, µs (PostgreSQL's included)", [(l, r["served_us"], c) for l, r, c in runs])],
    lambda v: f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"))
PY
cat bench/results/load.md
