#!/usr/bin/env bash
# How far the extra bytes of an ELF delta compress: the code no old range matches, which is
# most of a browser-sized payload (bench/results/elf-big.md). Codes them as the payload does
# (LZMA2, preset 6, 8 MiB dictionary, lc=3 lp=0 pb=0: engine `compress_xz_payload`), with a
# 64 MiB dictionary, behind xz's x86 branch filter, and with zpaq's context-mixing methods 4
# and 5 (which filter x86 calls too): a bound on what any coder a device could run would gain.
#
#   bench/extra_bound.sh DELTA    # a container of method 4 (`deltaroot diff --method elf`)
#
# Needs python3 with zstandard, xz and zpaq (apt-get install zpaq). Prints a Markdown table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
delta=${1:?usage: bench/extra_bound.sh DELTA}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$here/patch_streams.py" deltaroot "$delta" --dump "$work/streams" >/dev/null
extra=$work/streams/extra
lz=lc=3,lp=0,pb=0
size() { wc -c | tr -d ' '; }
row() { printf '| %s | %s |\n' "$1" "$2"; }
echo "$delta: extra bytes $(stat -c %s "$extra")"
echo
echo "| coder | bytes |"
echo "|---|---:|"
row "xz as the payload (preset 6, 8 MiB dictionary)" "$(xz -T1 -c --check=none --lzma2=preset=6,dict=8MiB,$lz "$extra" | size)"
row "xz, 64 MiB dictionary" "$(xz -T1 -c --check=none --lzma2=preset=6,dict=64MiB,$lz "$extra" | size)"
row "xz --x86 (branch filter), 8 MiB" "$(xz -T1 -c --check=none --x86 --lzma2=preset=6,dict=8MiB,$lz "$extra" | size)"
for m in 4 5; do
  (cd "$work" && zpaq a "m$m.zpaq" streams/extra "-m$m" >/dev/null 2>&1)
  row "zpaq -m$m (context mixing)" "$(stat -c %s "$work/m$m.zpaq")"
done
