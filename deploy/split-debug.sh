#!/usr/bin/env bash
# Splits the debug info off release binaries: BIN keeps no .debug_* section and a
# .gnu_debuglink to BIN.debug beside it, where gdb, perf and addr2line find the line tables
# (Cargo.toml's release profile builds with `debug = 1`). Run after `cargo build --release`:
#   deploy/split-debug.sh target/release/deltaroot-agent target/release/deltaroot-apply
# Ship BIN; keep BIN.debug for reading crash backtraces. (Cargo's own split-debuginfo =
# "packed" with strip = "debuginfo" writes a .dwp, but strips the skeleton units the binary
# needs to find it: no debugger can use that .dwp.)
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BIN..." >&2; exit 2; }
for bin in "$@"; do
  objcopy --only-keep-debug "$bin" "$bin.debug"
  chmod -x "$bin.debug"
  objcopy --strip-debug --add-gnu-debuglink="$bin.debug" "$bin"
  if readelf -S "$bin" | grep -q ' \.debug_\(info\|line\|str\|abbrev\)'; then
    echo "split-debug: $bin still holds debug sections" >&2
    exit 1
  fi
  echo "$bin: $(stat -c %s "$bin") bytes; $bin.debug: $(stat -c %s "$bin.debug") bytes"
done
