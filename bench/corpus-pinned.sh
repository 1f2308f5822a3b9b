#!/usr/bin/env bash
# corpus-pinned.sh SET: single-file ELF pairs of the ELF benchmark from Debian packages at
# pinned versions, beside the x86-64 pairs of ../shared/corpus.sh.
#
#   arm64  the AArch64 pairs: the programs and libraries of the x86-64 pairs from Debian 12's
#          arm64 packages, at the versions those pairs use (the same source, built for the
#          other architecture)
#   big    browser-sized x86-64 pairs (150 MB and more): Chromium's executable and Firefox
#          ESR's libxul, from Debian 12's release to its security update
#
#   $CORPUS_DIR/elf-SET/<name>/{old,new}   the pair
#   $CORPUS_DIR/elf-SET/<name>/SOURCE      which package, version and path each side came from
#   $CORPUS_DIR/elf-SET.tsv                the versions used
#
# Uses only `apt-get download PKG:ARCH=VERSION` from the configured apt sources (arm64 is added
# to dpkg's foreign architectures when missing; nothing is installed) and `dpkg-deb -x`.
# Idempotent: .debs are cached in $CORPUS_DIR/debs-SET, unpacked packages in
# $CORPUS_DIR/x-SET, and a pair's files are copied only when they differ. Run by
# `ELF_ARCH=arm64 bench/elf.sh` and `ELF_ARCH=big bench/elf.sh`; re-run freely.
#
# Versions are pinned (offered by Debian bookworm and bookworm-security on 2026-12-04). If a
# mirror drops one, the script stops and names it.
set -euo pipefail

CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
SET=${1:-}
case $SET in
  arm64) ARCH=arm64 MACHINE=b700 MACHINE_NAME=AArch64 ;;
  big) ARCH=amd64 MACHINE=3e00 MACHINE_NAME=x86-64 ;;
  *) echo "corpus-pinned.sh: the set is arm64 or big, not '$SET'" >&2; exit 2 ;;
esac
DEBS=$CORPUS_DIR/debs-$SET
X=$CORPUS_DIR/x-$SET
OUT=$CORPUS_DIR/elf-$SET
mkdir -p "$DEBS" "$X" "$OUT"
log() { printf '[corpus-pinned %s %(%H:%M:%S)T] %s\n' "$SET" -1 "$*" >&2; }

L=usr/lib/aarch64-linux-gnu
# name | old pkg=version | path in it | new pkg=version | path in it
ARM64_PAIRS=(
  "libc|libc6=2.36-9+deb12u7|lib/aarch64-linux-gnu/libc.so.6|libc6=2.36-9+deb12u14|lib/aarch64-linux-gnu/libc.so.6"
  "libcrypto|libssl3=3.0.17-1~deb12u2|$L/libcrypto.so.3|libssl3=3.0.22-1~deb12u2|$L/libcrypto.so.3"
  "libcrypto-1step|libssl3=3.0.20-1~deb12u2|$L/libcrypto.so.3|libssl3=3.0.22-1~deb12u2|$L/libcrypto.so.3"
  "libpython3.11|libpython3.11=3.11.2-6+deb12u8|$L/libpython3.11.so.1.0|libpython3.11=3.11.2-6+deb12u9|$L/libpython3.11.so.1.0"
  "python3.11|python3.11-minimal=3.11.2-6+deb12u8|usr/bin/python3.11|python3.11-minimal=3.11.2-6+deb12u9|usr/bin/python3.11"
  "libnode|libnode108=18.20.4+dfsg-1~deb12u2|$L/libnode.so.108|libnode108=18.20.4+dfsg-1~deb12u3|$L/libnode.so.108"
  "postgres|postgresql-15=15.18-0+deb12u1|usr/lib/postgresql/15/bin/postgres|postgresql-15=15.20-0+deb12u1|usr/lib/postgresql/15/bin/postgres"
  "libsystemd-shared|libsystemd-shared=252.38-1~deb12u1|$L/systemd/libsystemd-shared-252.so|libsystemd-shared=252.39-1~deb12u2|$L/systemd/libsystemd-shared-252.so"
  "git|git=1:2.39.5-0+deb12u2|usr/bin/git|git=1:2.39.5-0+deb12u3|usr/bin/git"
  "libcurl|libcurl4=7.88.1-10+deb12u5|$L/libcurl.so.4.8.0|libcurl4=7.88.1-10+deb12u15|$L/libcurl.so.4.8.0"
)
# Chromium 150 -> 156 (bookworm -> bookworm-security: 279 -> 297 MB, a PIE with 26 MB of RELA
# relocations); Firefox ESR 140 -> 153 (libxul.so, 177 -> 184 MB).
BIG_PAIRS=(
  "chromium|chromium=150.0.7871.100-1~deb12u1|usr/lib/chromium/chromium|chromium=156.0.8078.114-1~deb12u1|usr/lib/chromium/chromium"
  "libxul|firefox-esr=140.12.0esr-1~deb12u1|usr/lib/firefox-esr/libxul.so|firefox-esr=153.8.0esr-1~deb12u1|usr/lib/firefox-esr/libxul.so"
)
if [ "$SET" = arm64 ]; then ELF_PAIRS=("${ARM64_PAIRS[@]}"); else ELF_PAIRS=("${BIG_PAIRS[@]}"); fi

deb_of() { # pkg ver -> path of the cached .deb (apt-get download writes ':' as %3a)
  local f=$DEBS/${1}_${2//:/%3a}_$ARCH.deb
  [[ -f $f ]] && echo "$f"
}

if [ "$ARCH" = arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64"
  dpkg --add-architecture arm64
  apt-get update -qq
fi

want=()
for line in "${ELF_PAIRS[@]}"; do
  IFS='|' read -r _ op _ np _ <<<"$line"
  for pv in "$op" "$np"; do deb_of "${pv%%=*}" "${pv#*=}" >/dev/null || want+=("${pv%%=*}:$ARCH=${pv#*=}"); done
done
if ((${#want[@]})); then
  mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
  for pv in "${want[@]}"; do
    apt-cache show "$pv" >/dev/null 2>&1 || { log "apt-get update"; apt-get update -qq; break; }
  done
  for pv in "${want[@]}"; do
    apt-cache show "$pv" >/dev/null 2>&1 || { echo "corpus-pinned.sh: $pv is not offered by the configured apt sources" >&2; exit 1; }
  done
  log "downloading ${#want[@]} $ARCH packages"
  (cd "$DEBS" && apt-get download -q "${want[@]}" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  for pv in "${want[@]}"; do
    p=${pv%%:$ARCH=*} v=${pv#*:$ARCH=}
    deb_of "$p" "$v" >/dev/null || { echo "corpus-pinned.sh: download of $pv failed" >&2; exit 1; }
  done
fi

unpacked() { # pkg=ver -> $X/pkg_ver, unpacked once with dpkg-deb -x
  local pkg=${1%%=*} ver=${1#*=} d
  d="$X/${pkg}_${ver//:/%3a}"
  if [[ ! -d $d ]]; then
    rm -rf "$d.tmp"; mkdir -p "$d.tmp"
    dpkg-deb -x "$(deb_of "$pkg" "$ver")" "$d.tmp"
    mv "$d.tmp" "$d"
  fi
  echo "$d"
}

printf 'name\told\tnew\n' >"$CORPUS_DIR/elf-$SET.tsv"
for line in "${ELF_PAIRS[@]}"; do
  IFS='|' read -r name op opath np npath <<<"$line"
  d=$OUT/$name; mkdir -p "$d"
  src_old=$(unpacked "$op")/$opath src_new=$(unpacked "$np")/$npath
  [[ -f $src_old && -f $src_new ]] || { echo "corpus-pinned.sh: $name: missing $src_old or $src_new" >&2; exit 1; }
  for f in "$src_old" "$src_new"; do
    head -c 20 "$f" | od -An -tx1 | tr -d ' \n' | grep -q "^7f454c46020101.*$MACHINE\$" ||
      { echo "corpus-pinned.sh: $f is not a 64-bit little-endian $MACHINE_NAME ELF file" >&2; exit 1; }
  done
  cmp -s "$src_old" "$d/old" 2>/dev/null || cp "$src_old" "$d/old"
  cmp -s "$src_new" "$d/new" 2>/dev/null || cp "$src_new" "$d/new"
  op=${op%%=*}:$ARCH=${op#*=} np=${np%%=*}:$ARCH=${np#*=}
  printf 'old: %s %s\nnew: %s %s\n' "$op" "$opath" "$np" "$npath" >"$d/SOURCE"
  printf '%s\t%s:/%s\t%s:/%s\n' "$name" "$op" "$opath" "$np" "$npath" >>"$CORPUS_DIR/elf-$SET.tsv"
done
log "$(ls "$OUT" | wc -l) $MACHINE_NAME pairs ready in $OUT"
