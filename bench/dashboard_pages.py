#!/usr/bin/env python3
"""Times the dashboard's pages for bench/dashboard.sh: signs in as a user through /ui/login
(CSRF cookie and field, as a browser does), then, on one kept-alive HTTP connection, asks each
page WARMUP times untimed and REQUESTS times timed (or until MAX_SECS per page have passed),
from sending the request to the last byte of the answer. Writes the figures as JSON.

    dashboard_pages.py URL USER PASSWORD_FILE PRODUCT NEWEST_VERSION OUT.json
"""
import http.client
import json
import math
import os
import re
import sys
import time
import urllib.parse

url, user, pwfile, product, newest, out = sys.argv[1:7]
newest_i = int(newest.rsplit(".", 1)[1])
REQUESTS = int(os.environ.get("REQUESTS", "200"))
WARMUP = int(os.environ.get("WARMUP", "10"))
MAX_SECS = float(os.environ.get("MAX_SECS", "60"))
host = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)


def cookies(resp):
    got = {}
    for k, v in resp.getheaders():
        if k.lower() == "set-cookie":
            kv = v.split(";", 1)[0]
            name, _, val = kv.partition("=")
            got[name] = val
    return got


# --- sign in ---
conn.request("GET", "/ui/login")
r = conn.getresponse()
body = r.read().decode()
csrf = cookies(r)["drt_login_csrf"]
assert f'value="{csrf}"' in body, "login form without its CSRF field"
password = open(pwfile).readline().strip()
form = urllib.parse.urlencode({"username": user, "password": password, "csrf": csrf})
conn.request("POST", "/ui/login", body=form, headers={
    "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"drt_login_csrf={csrf}"})
r = conn.getresponse()
r.read()
session = cookies(r).get("drt_session")
assert r.status in (302, 303) and session, f"sign-in refused: {r.status}"
hdr = {"Cookie": f"drt_session={session}"}

p = urllib.parse.quote(product)
older = f"1.0.{max(1, newest_i - 1)}"
far = f"1.0.{max(1, newest_i - 20)}"
PAGES = [
    ("home", "/ui/"),
    ("releases", f"/ui/products/{p}/releases"),
    ("release (newest)", f"/ui/products/{p}/releases/{newest}"),
    ("ledger", f"/ui/products/{p}/ledger"),
    ("diff (newest vs previous)", f"/ui/products/{p}/diff?from={older}&to={newest}"),
    ("diff (20 releases apart)", f"/ui/products/{p}/diff?from={far}&to={newest}"),
    ("channels", f"/ui/products/{p}/channels"),
    ("devices", f"/ui/products/{p}/devices"),
    ("devices, one id", f"/ui/products/{p}/devices?id=dev-4242"),
    ("devices, failed", f"/ui/products/{p}/devices?result=failed"),
    ("audit", "/ui/audit"),
    ("audit, one action", "/ui/audit?action=rollback"),
    ("admin: users", "/ui/admin/users"),
    ("admin: tokens", "/ui/admin/tokens"),
]


def get(path):
    t0 = time.perf_counter()
    conn.request("GET", path, headers=hdr)
    r = conn.getresponse()
    b = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise SystemExit(f"{path}: status {r.status}: {b[:300]!r}")
    return dt, len(b), b


def pct(xs, q):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))  # nearest rank
    return xs[k]


results = []
for name, path in PAGES:
    for _ in range(WARMUP):
        get(path)
    times, size = [], 0
    start = time.perf_counter()
    while len(times) < REQUESTS and time.perf_counter() - start < MAX_SECS:
        dt, size, body = get(path)
        times.append(dt)
    if name == "devices, one id":
        assert b"dev-4242" in body, "device dev-4242 not on its page"
    res = dict(page=name, path=path, n=len(times), bytes=size,
               p50=pct(times, 0.50) * 1e3, p99=pct(times, 0.99) * 1e3,
               max=max(times) * 1e3, mean=sum(times) / len(times) * 1e3)
    results.append(res)
    print(f"  {name:28} n={res['n']:4}  p50 {res['p50']:8.2f} ms  p99 {res['p99']:8.2f} ms"
          f"  ({size:,} bytes)", file=sys.stderr)
json.dump(results, open(out, "w"), indent=1)
