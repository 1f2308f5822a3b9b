#!/usr/bin/env bash
# corpus-arm64.sh: the AArch64 single-file pairs of the ELF benchmark, from Debian 12's arm64
# packages, at the versions the x86-64 pairs of ../shared/corpus.sh use (the same source, built
# for the other architecture).
#
#   $CORPUS_DIR/elf-arm64/<name>/{old,new}   the pair
#   $CORPUS_DIR/elf-arm64/<name>/SOURCE      which package, version and path each side came from
#   $CORPUS_DIR/elf-arm64.tsv                the versions used
#
# Uses only `apt-get download PKG:arm64=VERSION` from the configured apt sources (arm64 is added
# to dpkg's foreign architectures when missing; nothing is installed) and `dpkg-deb -x`.
# Idempotent: .debs are cached in $CORPUS_DIR/debs-arm64, unpacked packages in
# $CORPUS_DIR/x-arm64, and a pair's files are copied only when they differ. Run by
# `ELF_ARCH=arm64 bench/elf.sh`; re-run freely.
#
# Versions are pinned (offered for arm64 by Debian bookworm and bookworm-security on
# 2026-12-04). If a mirror drops one, the script stops and names it.
set -euo pipefail

CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
DEBS=$CORPUS_DIR/debs-arm64
X=$CORPUS_DIR/x-arm64
OUT=$CORPUS_DIR/elf-arm64
mkdir -p "$DEBS" "$X" "$OUT"
log() { printf '[corpus-arm64 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

L=usr/lib/aarch64-linux-gnu
# name | old pkg=version | path in it | new pkg=version | path in it  (all arm64)
ELF_PAIRS=(
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

deb_of() { # pkg ver -> path of the cached arm64 .deb (apt-get download writes ':' as %3a)
  local f=$DEBS/${1}_${2//:/%3a}_arm64.deb
  [[ -f $f ]] && echo "$f"
}

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64"
  dpkg --add-architecture arm64
  apt-get update -qq
fi

want=()
for line in "${ELF_PAIRS[@]}"; do
  IFS='|' read -r _ op _ np _ <<<"$line"
  for pv in "$op" "$np"; do deb_of "${pv%%=*}" "${pv#*=}" >/dev/null || want+=("${pv%%=*}:arm64=${pv#*=}"); done
done
if ((${#want[@]})); then
  mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
  for pv in "${want[@]}"; do
    apt-cache show "$pv" >/dev/null 2>&1 || { log "apt-get update"; apt-get update -qq; break; }
  done
  for pv in "${want[@]}"; do
    apt-cache show "$pv" >/dev/null 2>&1 || { echo "corpus-arm64.sh: $pv is not offered by the configured apt sources" >&2; exit 1; }
  done
  log "downloading ${#want[@]} arm64 packages"
  (cd "$DEBS" && apt-get download -q "${want[@]}" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  for pv in "${want[@]}"; do
    p=${pv%%:arm64=*} v=${pv#*:arm64=}
    deb_of "$p" "$v" >/dev/null || { echo "corpus-arm64.sh: download of $pv failed" >&2; exit 1; }
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

printf 'name\told\tnew\n' >"$CORPUS_DIR/elf-arm64.tsv"
for line in "${ELF_PAIRS[@]}"; do
  IFS='|' read -r name op opath np npath <<<"$line"
  d=$OUT/$name; mkdir -p "$d"
  src_old=$(unpacked "$op")/$opath src_new=$(unpacked "$np")/$npath
  [[ -f $src_old && -f $src_new ]] || { echo "corpus-arm64.sh: $name: missing $src_old or $src_new" >&2; exit 1; }
  for f in "$src_old" "$src_new"; do
    head -c 20 "$f" | od -An -tx1 | tr -d ' \n' | grep -q '^7f454c46020101.*b700$' ||
      { echo "corpus-arm64.sh: $f is not a 64-bit little-endian AArch64 ELF file" >&2; exit 1; }
  done
  cmp -s "$src_old" "$d/old" 2>/dev/null || cp "$src_old" "$d/old"
  cmp -s "$src_new" "$d/new" 2>/dev/null || cp "$src_new" "$d/new"
  op=${op%%=*}:arm64=${op#*=} np=${np%%=*}:arm64=${np#*=}
  printf 'old: %s %s\nnew: %s %s\n' "$op" "$opath" "$np" "$npath" >"$d/SOURCE"
  printf '%s\t%s:/%s\t%s:/%s\n' "$name" "$op" "$opath" "$np" "$npath" >>"$CORPUS_DIR/elf-arm64.tsv"
done
log "$(ls "$OUT" | wc -l) AArch64 pairs ready in $OUT"
