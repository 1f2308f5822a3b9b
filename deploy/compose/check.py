#!/usr/bin/env python3
"""Checks deploy/compose/compose.yaml without a container engine (no `docker compose
config` offline): it parses as YAML (anchors and merge keys resolved), uses only keys of
the compose specification, names only services and volumes it defines, and runs
deltaroot-server as the server understands it: two or more replicas on PostgreSQL and S3,
health checks that need no shell (the image has none), nginx with ../nginx/cache.conf.

    deploy/compose/check.py [--server-bin PATH] [FILE]

--server-bin: a deltaroot-server binary; each flag in the replicas' command and each
DELTAROOT_* variable they set must appear in its `--help` (`serve`, `health`). The server's
container test runs this with the binary it tests. Exits 1 listing every problem."""

import argparse
import os
import re
import subprocess
import sys

import yaml

TOP = {"version", "name", "services", "networks", "volumes", "configs", "secrets"}
SERVICE = {
    "build", "cap_add", "cap_drop", "command", "configs", "container_name", "cpus",
    "depends_on", "deploy", "devices", "dns", "entrypoint", "env_file", "environment",
    "expose", "extra_hosts", "group_add", "healthcheck", "hostname", "image", "init",
    "labels", "logging", "mem_limit", "network_mode", "networks", "pids_limit", "platform",
    "ports", "privileged", "profiles", "pull_policy", "read_only", "restart", "secrets",
    "security_opt", "shm_size", "stop_grace_period", "stop_signal", "sysctls", "tmpfs",
    "ulimits", "user", "volumes", "working_dir",
}
HEALTHCHECK = {"test", "interval", "timeout", "start_period", "start_interval", "retries",
               "disable"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PULL = {"always", "never", "missing", "build", "if_not_present"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
# Read by the object store's S3 client (object_store's AmazonS3Builder::from_env and the
# server's S3Options::from_env).
AWS = {"AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
       "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ALLOW_HTTP"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")


def as_dict(v):
    """environment / depends_on in either of their two forms, as a dict."""
    if v is None:
        return {}
    if isinstance(v, dict):
        return v
    out = {}
    for item in v:
        k, _, val = str(item).partition("=")
        out[k] = val if "=" in str(item) else None
    return out


def check(doc, server_bin):
    problems = []
    say = problems.append
    if not isinstance(doc, dict):
        return ["the file is not a mapping"]
    for k in doc:
        if k not in TOP and not k.startswith("x-"):
            say(f"unknown top-level key {k!r}")
    services = doc.get("services") or {}
    volumes = doc.get("volumes") or {}
    if not services:
        say("no services")
    servers = []
    for name, s in services.items():
        where = f"services.{name}"
        if not isinstance(s, dict):
            say(f"{where}: not a mapping")
            continue
        for k in s:
            if k not in SERVICE and not k.startswith("x-"):
                say(f"{where}: unknown key {k!r}")
        if not isinstance(s.get("image"), str) and "build" not in s:
            say(f"{where}: neither image nor build")
        if s.get("pull_policy", "missing") not in PULL:
            say(f"{where}: pull_policy {s['pull_policy']!r}")
        if str(s.get("restart", "no")) not in RESTART:
            say(f"{where}: restart {s['restart']!r}")
        deps = s.get("depends_on") or {}
        for dep, how in (deps.items() if isinstance(deps, dict) else ((d, None) for d in deps)):
            if dep not in services:
                say(f"{where}: depends on {dep!r}, which is not a service")
            cond = (how or {}).get("condition", "service_started")
            if cond not in CONDITIONS:
                say(f"{where}: depends_on {dep}: condition {cond!r}")
            if cond == "service_healthy" and "healthcheck" not in services.get(dep, {}):
                if "deltaroot-server" not in str(services.get(dep, {}).get("image")):
                    say(f"{where}: waits for {dep} to be healthy, which has no health check")
        for v in s.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src and not src.startswith(("/", ".", "~")) and src not in volumes:
                say(f"{where}: volume {src!r} is not declared under volumes")
        for p in s.get("ports") or []:
            if not re.match(r"^(\d+\.\d+\.\d+\.\d+:)?\d+(:\d+)?(/(tcp|udp))?$", str(p)):
                say(f"{where}: port {p!r}")
        hc = s.get("healthcheck")
        if hc is not None:
            for k in hc:
                if k not in HEALTHCHECK:
                    say(f"{where}.healthcheck: unknown key {k!r}")
            for k in ("interval", "timeout", "start_period"):
                if k in hc and not DURATION.match(str(hc[k])):
                    say(f"{where}.healthcheck.{k}: {hc[k]!r} is not a duration")
        if "deltaroot-server" in str(s.get("image")):
            servers.append((name, s))

    if len(servers) < 2:
        say(f"{len(servers)} deltaroot-server services; replicas need two or more")
    for name, s in servers:
        where = f"services.{name}"
        env = as_dict(s.get("environment"))
        db = str(env.get("DELTAROOT_DATABASE") or "")
        m = re.match(r"^postgres(ql)?://[^@/]+@([^:/]+)(:\d+)?/\w+", db)
        if not m:
            say(f"{where}: DELTAROOT_DATABASE {db!r} is not a postgres:// URL")
        elif m.group(2) not in services:
            say(f"{where}: DELTAROOT_DATABASE names host {m.group(2)!r}, not a service")
        if not str(env.get("DELTAROOT_OBJECTS") or "").startswith("s3://"):
            say(f"{where}: DELTAROOT_OBJECTS is not s3://BUCKET/PREFIX")
        ep = re.match(r"^https?://([^:/]+)", str(env.get("AWS_ENDPOINT_URL") or ""))
        if not ep or ep.group(1) not in services:
            say(f"{where}: AWS_ENDPOINT_URL does not name the S3 service")
        for k in env:
            if k.startswith("AWS_") and k not in AWS:
                say(f"{where}: {k} is not read by the S3 client")
        cmd = s.get("command")
        if not isinstance(cmd, list) or not cmd or cmd[0] != "serve":
            say(f"{where}: command is not the list form of `serve …`")
            cmd = ["serve"]
        if "--data" not in cmd:
            say(f"{where}: `serve` needs --data (uploads in flight are spooled there)")
        test = (s.get("healthcheck") or {}).get("test") or []
        if not (isinstance(test, list) and test[:1] == ["CMD"] and "health" in test):
            say(f"{where}: the health check must be [CMD, …deltaroot-server, health, …]: "
                "the image has no shell for CMD-SHELL")
        if server_bin:
            helps = {}
            for sub in ("serve", "health"):
                r = subprocess.run([server_bin, sub, "--help"], capture_output=True, text=True)
                if r.returncode != 0:
                    say(f"{server_bin} {sub} --help failed: {r.stderr}")
                helps[sub] = r.stdout
            for flag in (a.split("=")[0] for a in cmd if str(a).startswith("--")):
                if not re.search(rf"(^|\s){re.escape(flag)}(\s|=|$)", helps["serve"], re.M):
                    say(f"{where}: `serve` has no flag {flag}")
            for flag in (a for a in test if str(a).startswith("--")):
                if not re.search(rf"(^|\s){re.escape(flag)}(\s|=|$)", helps["health"], re.M):
                    say(f"{where}: `health` has no flag {flag}")
            for k in env:
                if k.startswith("DELTAROOT_") and not any(
                        f"[env: {k}=" in h for h in helps.values()):
                    say(f"{where}: deltaroot-server reads no variable {k}")

    nginx = [s for s in services.values() if "nginx" in str(s.get("image"))]
    if not any(str(v).startswith("../nginx/cache.conf:")
               for s in nginx for v in s.get("volumes") or []):
        say("no nginx service mounts ../nginx/cache.conf")
    return problems


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-bin", help="a deltaroot-server binary to check flags against")
    ap.add_argument("file", nargs="?", default=os.path.join(here, "compose.yaml"))
    a = ap.parse_args()
    with open(a.file) as f:
        try:
            doc = yaml.safe_load(f)
        except yaml.YAMLError as e:
            print(f"{a.file}: not YAML: {e}", file=sys.stderr)
            return 1
    problems = check(doc, a.server_bin)
    for p in problems:
        print(f"{a.file}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"{a.file}: {len(doc['services'])} services checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
