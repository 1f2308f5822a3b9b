#!/usr/bin/env bash
# Runs the commands of docs/OPERATIONS.md's "The first hour" and "Runbook: a bad release",
# in that order, in an empty folder, with the built binaries first on PATH; then checks
# that the device ended where the guide says (2.0 after the rollback) and that the server
# answered over HTTPS with the private CA. CI runs it (.ci/run) after the tests built the
# binaries; BIN (default $CARGO_TARGET_DIR/debug, else target/debug) says where they are.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${BIN:-${CARGO_TARGET_DIR:-$here/target}/debug}" && pwd)
for b in deltaroot deltaroot-server deltaroot-agent; do
  [ -x "$bin/$b" ] || { echo "first-hour: $bin/$b is missing (cargo build first, or BIN=DIR)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/deltaroot-first-hour.XXXXXX)
script="$work/guide.sh"
# The sh blocks of the two sections, in the order they appear.
awk '
  /^## / { on = ($0 ~ /^## The first hour/ || $0 ~ /^## Runbook: a bad release/) }
  on && /^```sh$/ { block = 1; next }
  block && /^```$/ { block = 0; print ""; next }
  block { print }
' "$here/docs/OPERATIONS.md" > "$script"
lines=$(grep -c . "$script")
[ "$lines" -ge 30 ] || { echo "first-hour: only $lines lines found in docs/OPERATIONS.md" >&2; exit 1; }
cd "$work"
echo "first-hour: running $lines lines of docs/OPERATIONS.md in $work"
PATH="$bin:$PATH" bash -euo pipefail -c "
  trap 'kill \$(jobs -p) 2>/dev/null || true' EXIT
  set -x
  $(cat "$script")
" > "$work/out.txt" 2>&1 || {
  tail -n 40 "$work/out.txt" >&2
  echo "first-hour: a command of the guide failed (whole log: $work/out.txt, server: $work/server.log)" >&2
  exit 1
}
# Where the guide says the device ends: on 2.0 again, with 3.0's tree kept as previous.
[ "$(cat device/current/etc/os-release)" = "demo 2.0" ] || {
  echo "first-hour: the device runs $(cat device/current/etc/os-release), not demo 2.0" >&2; exit 1; }
grep -q '^demo 3.0$' "$work/out.txt" || { echo "first-hour: the device never ran 3.0" >&2; exit 1; }
echo "first-hour: ok: the guide's $(grep -c '^+ ' "$work/out.txt") commands ran; the device went 1.0, 2.0, 3.0 and back to 2.0"
rm -rf "$work"
