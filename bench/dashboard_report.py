#!/usr/bin/env python3
"""bench/results/dashboard.md from the JSON bench/dashboard.sh wrote per backend
(bench/results/dashboard-sqlite.json, dashboard-postgres.json) and the notes in
bench/results/dashboard-notes.md.

    dashboard_report.py RESULTS_DIR
"""
import datetime
import json
import os
import subprocess
import sys

d = sys.argv[1]
GOAL = 100.0
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print(f"""# Dashboard page benchmark (`bench/dashboard.sh`)

Goal: every dashboard page's p99 under {GOAL:.0f} ms over a product of 100 000 devices, 1 000
releases and 1 000 000 check-ins, on {os.cpu_count()} cores ({cpu}), loopback, release build, server
and client on the same cores. Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.

Times are client-side (Python `http.client`, one kept-alive plain-HTTP connection, signed in
as an admin): from sending the request to the answer's last byte, so an upper bound of the
server's time (the server's per-route histogram covers the API, not `/ui/`). Each page was
asked 10 times untimed, then n times timed; p99 is the nearest rank.
""")
for b in ["sqlite", "postgres"]:
    f = os.path.join(d, f"dashboard-{b}.json")
    if not os.path.exists(f):
        print(f"## {b}\n\nNot measured.\n")
        continue
    r = json.load(open(f))
    m, pages = r["meta"], r["pages"]
    dev, rel, plans, vd, sd, au = m["counts"].split()
    taken = m.get("taken", "")
    print(f"## {'SQLite' if b == 'sqlite' else 'PostgreSQL'}\n")
    print(f"Measured {taken}. Load average (1, 5, 15 min) before the pages: {m['load_before']}; "
          f"after: {m['load_after']}"
          + (" — above its 2 cores: the 1-minute average still carries this script's own "
             "check-in phase just before, and any other work on the machine (a CI run), "
             "so these figures may be pessimistic" if float(m["load_before"].split()[0]) > 2
             or float(m["load_after"].split()[0]) > 2 else "") + ".\n")
    print("| page | n | p50 ms | p99 ms | max ms | page size | p99 under 100 ms |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for p in pages:
        ok = "yes" if p["p99"] < GOAL else "**no**"
        print(f"| {p['page']} (`{p['path']}`) | {p['n']} | {p['p50']:.1f} | {p['p99']:.1f} | "
              f"{p['max']:.1f} | {p['bytes'] / 1024:.0f} KiB | {ok} |")
    print(f"""
The data: {int(rel):,} releases (published in {m['publish_secs']} s by `deltaroot publish`,
each with a plan from the previous one: {int(plans):,} plans), {int(dev):,} devices, made by
{int(m['checkins_written']):,} check-ins written by the server ({int(m['checkins_dropped']):,} dropped from a full
queue) out of wrk's `{m['wrk']}` through the check route in {m['checkin_secs']} s;
{int(vd):,} `version_days` rows and {int(sd):,} `served_days` rows (399 earlier days seeded in
SQL, today's from the check-ins), {int(au):,} audit rows ({int(m['audit_seeded']):,} seeded, the rest from
publishing and promoting).
""")
notes = os.path.join(d, "dashboard-notes.md")
if os.path.exists(notes):
    print(open(notes).read().strip())
