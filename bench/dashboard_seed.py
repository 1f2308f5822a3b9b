#!/usr/bin/env python3
"""History for bench/dashboard.sh that the server cannot make in one run: the daily rollups of
the 399 days before today (`version_days`, `served_days`) and an audit log spread over them.

Today's `version_days` row, the `devices` table, the releases, plans, channels and the audit
rows of their publishing and promotions are the server's own, made through its API before
this runs; this only adds older days, as the check-in writer and the plan route would have
left them (migration 0009: one row per product, day and version; one per product and day).

    dashboard_seed.py PHASE sqlite PATH.db PRODUCT RELEASES DEVICES AUDIT_ROWS
    dashboard_seed.py PHASE postgres URL PRODUCT RELEASES DEVICES AUDIT_ROWS   (through psql)

PHASE `audit` runs before the releases are published (the audit log is read newest id
first, so the older rows must come first; its product column is a name, not a key);
PHASE `days` after the check-ins, once the product exists.
"""
import json
import random
import subprocess
import sys
import time

phase, backend, target, product = sys.argv[1:5]
releases, devices, audit_rows = (int(a) for a in sys.argv[5:8])
rnd = random.Random(42)
now = int(time.time())
today = now // 86400
DAYS = 400  # housekeeping keeps 400 days (server/src/db/daily.rs KEEP_DAYS)


def version(i):
    return f"1.0.{i}"


def rows():
    """(table, columns, list of tuples) with product_id filled in later by a sub-select."""
    vd, sd, au = [], [], []
    for ago in range(DAYS - 1, 0, -1):
        day = today - ago
        # The newest release that day: releases were published evenly over the 400 days.
        newest = max(1, round(releases * (DAYS - ago) / DAYS))
        seen = int(devices * rnd.uniform(0.85, 0.97))
        # The fleet trails the newest release: 20 versions, the newer the more devices.
        weights = [0.5 ** (k / 3) for k in range(20)]
        total = sum(weights)
        left = seen
        for k in range(20):
            i = newest - k
            if i < 1:
                break
            n = left if k == 19 or i == 1 else int(seen * weights[k] / total)
            n = min(n, left)
            left -= n
            if n > 0:
                vd.append((day, version(i), n))
        plans = int(seen * rnd.uniform(0.02, 0.08))
        dl = plans * rnd.randint(40_000, 400_000)
        sd.append((day, plans, dl, plans * 120_000_000))
    actions = ["promote", "pause", "resume", "rollout", "rollback", "stop"]
    for k in range(audit_rows):
        # Before the server's own rows (publishing and promotions, made today).
        at = now - DAYS * 86400 + int(k * (DAYS - 2) * 86400 / audit_rows)
        a = rnd.choice(actions)
        v = version(max(1, round(releases * k / audit_rows)))
        au.append((at, rnd.choice(["ops-ci", "ada", "grace", "server"]), product,
                   rnd.choice(["stable", "beta"]), a,
                   json.dumps({"version": v, "note": "seeded by bench/dashboard_seed.py"})))
    return vd, sd, au


vd, sd, au = rows()
pid = f"(SELECT id FROM products WHERE name = '{product}')"


def q(v):
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def inserts(table, cols, tuples, with_pid=True):
    out = []
    for k in range(0, len(tuples), 500):
        chunk = tuples[k:k + 500]
        if with_pid:
            vals = ",\n".join("(" + ", ".join([pid] + [q(x) for x in t]) + ")" for t in chunk)
            out.append(f"INSERT INTO {table} (product_id, {cols}) VALUES\n{vals};")
        else:
            vals = ",\n".join("(" + ", ".join(q(x) for x in t) + ")" for t in chunk)
            out.append(f"INSERT INTO {table} ({cols}) VALUES\n{vals};")
    return out


sql = ["BEGIN;"]
if phase == "days":
    sql += inserts("version_days", "day, version, devices", vd)
    sql += inserts("served_days", "day, plans, download_bytes, image_bytes", sd)
    au = []
else:
    sql += inserts("audit", "at, who, product, channel, action, detail", au, with_pid=False)
    vd, sd = [], []
sql.append("COMMIT;")
text = "\n".join(sql)
if backend == "sqlite":
    import sqlite3
    c = sqlite3.connect(target, timeout=30)
    c.executescript(text)
    c.close()
else:
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", target], input=text, text=True,
                   check=True, stdout=subprocess.DEVNULL)
print(f"seeded {len(vd)} version_days rows, {len(sd)} served_days rows, {len(au)} audit rows",
      file=sys.stderr)
