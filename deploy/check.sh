#!/bin/bash
# Checks everything deploy/ ships, for CI: the systemd units, the Kubernetes manifests, the
# Prometheus alert rules (that they name only metrics and routes server/src serves), and the
# Compose file's own check where there is one. Runs every check, prints what each one looked
# at, and exits non-zero if any failed.
#
# Needs: systemd-analyze and systemd-sysusers (Debian `systemd`), promtool (Debian
# `prometheus`), kubernetes-validate (PyPI `kubernetes-validate`, which brings PyYAML and
# bundles the Kubernetes schemas: no network). Optional: kubectl, to render the kustomization
# as `kubectl apply -k` would (said as skipped without it).
#
#   deploy/check.sh            # from anywhere

set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failed=()
fail() {
    echo "FAIL: $*"
    failed+=("$1")
}
need() { # need TOOL PACKAGE
    command -v "$1" >/dev/null || {
        fail "$1 not found (install $2)"
        return 1
    }
}

# Kubernetes versions the manifests are validated against: the oldest this layout needs
# (lifecycle.preStop.sleep is on by default from 1.30) and the newest kubernetes-validate
# bundles.
KUBE_VERSIONS=(1.30.0 1.37.0)

# --- systemd units ------------------------------------------------------------------------
check_units() {
    echo "== systemd units: systemd-analyze verify"
    need systemd-analyze systemd || return
    local units=() u
    for u in "$here"/*.service "$here"/*.timer; do
        [ -e "$u" ] && units+=("$(basename "$u")")
    done
    if [ ${#units[@]} -eq 0 ]; then
        fail "no unit files in deploy/"
        return
    fi

    # A root of its own: systemd's units (sysinit.target, …) from this machine, ours in
    # /etc/systemd/system, and each program an Exec line names. verify only asks that the
    # program is an executable file; it is a stand-in copy of true(1), after checking that
    # its name is a binary this workspace builds.
    local root="$tmp/root" sys
    for sys in /usr/lib/systemd/system /lib/systemd/system; do
        [ -e "$sys/sysinit.target" ] && break
    done
    mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
    cp -a "$sys" "$root/usr/lib/systemd/"
    cp "${units[@]/#/$here/}" "$root/etc/systemd/system/"
    local bins
    bins=$(sed -n '/^\[\[bin\]\]/,/^name/s/^name *= *"\(.*\)"/\1/p' "$repo"/*/Cargo.toml)
    local prog
    for prog in $(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "${units[@]/#/$here/}" | sort -u); do
        if ! grep -qx "$(basename "$prog")" <<<"$bins"; then
            fail "units: $prog is not a binary of this workspace ($(echo $bins))"
        else
            echo "   $prog: a binary of the workspace; stand-in executable in the test root"
        fi
        mkdir -p "$root$(dirname "$prog")"
        cp "$(type -P true)" "$root$prog"
    done

    # verify exits 0 on unknown keys and values it cannot parse ("…, ignoring"): any output
    # at all is a failure.
    local out
    out=$(cd "$root" && systemd-analyze verify --root="$root" --man=no "${units[@]}" 2>&1)
    local rc=$?
    echo "   verified: ${units[*]}"
    if [ $rc -ne 0 ] || [ -n "$out" ]; then
        echo "$out" | sed 's/^/   /'
        fail "systemd-analyze verify (exit $rc)"
    fi

    # verify does not look for the unit a timer starts: its Unit=, or the service of its name.
    local t target
    for t in "$here"/*.timer; do
        [ -e "$t" ] || continue
        target=$(sed -n 's/^Unit=\(.*\)/\1/p' "$t")
        target=${target:-$(basename "$t" .timer).service}
        if [ -e "$here/$target" ]; then
            echo "   $(basename "$t") starts $target"
        else
            fail "$(basename "$t") starts $target, which is not in deploy/"
        fi
    done

    # The server's sandbox may not loosen without someone changing this number on purpose
    # (systemd-analyze security's exposure, times ten: 3.2 today).
    if ! out=$(cd "$root" && systemd-analyze security --offline=yes --root="$root" \
        --threshold=32 deltaroot-server.service 2>&1); then
        echo "$out" | grep -E '✗|Overall' | sed 's/^/   /'
        fail "deltaroot-server.service's exposure is over 3.2 (systemd-analyze security)"
    else
        echo "   systemd-analyze security: $(echo "$out" | grep -o 'Overall exposure level.*')"
    fi

    echo "== systemd-sysusers --dry-run deltaroot.sysusers.conf"
    need systemd-sysusers systemd || return
    if ! out=$(systemd-sysusers --root="$tmp/sysusers" --dry-run "$here/deltaroot.sysusers.conf" 2>&1) \
        || grep -qiE 'unknown|invalid|failed|ignoring' <<<"$out" \
        || ! grep -q "Creating user 'deltaroot'" <<<"$out"; then
        echo "$out" | sed 's/^/   /'
        fail "deltaroot.sysusers.conf"
    else
        echo "   $(grep "Creating user" <<<"$out")"
    fi
}

# --- Kubernetes ---------------------------------------------------------------------------
check_kubernetes() {
    local k="$here/kubernetes"
    echo "== Kubernetes: kustomization.yaml lists every manifest in deploy/kubernetes/"
    python3 - "$k" <<'EOF' || fail "kustomization.yaml resources"
import os, sys
import yaml
k = sys.argv[1]
with open(os.path.join(k, "kustomization.yaml")) as f:
    kust = yaml.safe_load(f)
listed = kust.get("resources") or []
files = sorted(n for n in os.listdir(k) if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml")
bad = False
for n in files:
    if n not in listed:
        print(f"   {n} is in the folder but not in kustomization.yaml's resources")
        bad = True
for n in listed:
    if not os.path.isfile(os.path.join(k, n)):
        print(f"   kustomization.yaml lists {n}, which is not a file in the folder")
        bad = True
if len(set(listed)) != len(listed):
    print("   kustomization.yaml lists a file twice")
    bad = True
print(f"   {len(files)} manifests, {len(listed)} listed")
sys.exit(1 if bad else 0)
EOF

    need kubernetes-validate "pip install kubernetes-validate" || return
    local files=() f v out
    for f in "$k"/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
    done
    for v in "${KUBE_VERSIONS[@]}"; do
        echo "== kubernetes-validate --strict -k $v: $(cd "$k" && ls -- *.yaml | grep -vx kustomization.yaml | tr '\n' ' ')"
        # A kind or apiVersion it has no schema for is only a WARN: a failure here.
        out=$(kubernetes-validate --strict --quiet -k "$v" "${files[@]}" 2>&1)
        local rc=$?
        if [ $rc -ne 0 ] || [ -n "$out" ]; then
            echo "$out" | sed 's/^/   /'
            fail "kubernetes-validate $v (exit $rc)"
        fi
    done

    echo "== kubectl kustomize deploy/kubernetes, and the result validated"
    if ! command -v kubectl >/dev/null; then
        echo "   skipped: kubectl is not installed (the files were validated one by one above)"
        return
    fi
    if ! kubectl kustomize "$k" >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
        sed 's/^/   /' "$tmp/kustomize.err"
        fail "kubectl kustomize"
        return
    fi
    out=$(kubernetes-validate --strict --quiet -k "${KUBE_VERSIONS[-1]}" "$tmp/rendered.yaml" 2>&1)
    if [ $? -ne 0 ] || [ -n "$out" ]; then
        echo "$out" | sed 's/^/   /'
        fail "kubernetes-validate of the kustomize output"
    fi
    echo "   $(grep -c '^kind:' "$tmp/rendered.yaml") objects rendered"
}

# --- Prometheus ---------------------------------------------------------------------------
check_prometheus() {
    need promtool prometheus || return
    echo "== promtool check rules prometheus/alerts.yaml"
    (cd "$here/prometheus" && promtool check rules alerts.yaml) 2>&1 | grep -v '^$' | sed 's/^/   /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "promtool check rules"
    echo "== promtool test rules prometheus/alerts.test.yaml"
    (cd "$here/prometheus" && promtool test rules alerts.test.yaml) 2>&1 | grep -v '^$' | sed 's/^/   /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "promtool test rules"
    # Every metric the rules name is one the server serves (a metric renamed in the code
    # cannot leave the rules watching nothing).
    local m
    for m in $(grep -v '^ *#' "$here/prometheus/alerts.yaml" | grep -o 'deltaroot_[a-z_]*' | sed 's/_\(bucket\|sum\|count\)$//' | sort -u); do
        if grep -rqw "$m" "$repo/server/src"; then
            echo "   $m: served by the server (server/src)"
        else
            fail "alerts.yaml names $m, which server/src does not serve"
        fi
    done
    # And every route they name is one of the server's routes (api::ROUTES).
    local r
    for r in $(grep -v '^ *#' "$here/prometheus/alerts.yaml" | grep -o 'route="[^"]*"' | sort -u); do
        r=${r#route=\"}
        r=${r%\"}
        if grep -qF "\"$r\")," "$repo/server/src/api/mod.rs"; then
            echo "   route $r: one of the server's routes"
        else
            fail "alerts.yaml names route $r, which is not in server/src/api/mod.rs's ROUTES"
        fi
    done
    # Every alert has a test, by name.
    local a
    for a in $(sed -n 's/^ *- alert: *//p' "$here/prometheus/alerts.yaml"); do
        grep -q "alertname: $a\$" "$here/prometheus/alerts.test.yaml" \
            || fail "alert $a has no test in alerts.test.yaml"
    done
}

# --- Compose ------------------------------------------------------------------------------
check_compose() {
    [ -e "$here/compose/check.py" ] || return 0
    echo "== compose/check.py"
    python3 "$here/compose/check.py" 2>&1 | sed 's/^/   /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "compose/check.py"
}

check_units
check_kubernetes
check_prometheus
check_compose

if [ ${#failed[@]} -gt 0 ]; then
    echo "deploy/check.sh: ${#failed[@]} check(s) failed"
    exit 1
fi
echo "deploy/check.sh: all checks passed"
