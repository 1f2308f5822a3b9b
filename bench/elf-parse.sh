#!/usr/bin/env bash
# ELF layout survey: does the ELF method's layout parser accept every real ELF file?
#
# Runs `deltaroot inspect-elf` (headers only, no delta) over every file whose first bytes are
# "\x7fELF" in each source, and prints a Markdown report: per source the ELF files found, how
# many parse, how many are 64-bit little-endian x86-64 or AArch64 (the files the method is for),
# and every refusal with its reason.
#
#   bench/elf-parse.sh > bench/results/elf-parse.md
#
# Sources: the corpus's image trees ($CORPUS_DIR/trees/*/{A,B}), this machine's
# /usr/lib/chromium, /usr/lib and /usr/bin, and Debian packages downloaded (never installed)
# into $ELF_SURVEY_DIR (default /tmp/elfsurvey) and unpacked with dpkg-deb -x: a few arm64
# libraries and programs of this release, Chromium for arm64, and Chromium for amd64 of other
# Debian suites (13 "trixie", unstable, 11 "bullseye"), through an apt configuration of the
# survey's own (the machine's sources are left alone; arm64 is added to dpkg's architectures
# when missing).
#
# ELF_SURVEY_PAIR=1 also diffs this machine's Chromium against trixie's with
# `deltaroot diff --method elf` (about 10 minutes and 3 GiB), the pair a refusal was reported on.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CORPUS_DIR=${CORPUS_DIR:-$HOME/corpus}
work=${ELF_SURVEY_DIR:-/tmp/elfsurvey}
target=${CARGO_TARGET_DIR:-$here/target}
CARGO_TARGET_DIR=$target cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p deltaroot-publisher
dr=$target/release/deltaroot
mkdir -p "$work"

arm64_pkgs=(libc6:arm64 libssl3:arm64 libpython3.11:arm64 postgresql-15:arm64 libnode108:arm64 nodejs:arm64 chromium:arm64)
# Debian packages: downloaded once, unpacked beside the .deb.
fetch() { # fetch DIR [APT OPTIONS --] PACKAGE...
    local dir=$1; shift
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    mkdir -p "$dir/debs" "$dir/root"
    if ! ls "$dir"/debs/*.deb >/dev/null 2>&1; then
        (cd "$dir/debs" && apt-get "${opts[@]}" download "$@" >/dev/null 2>&1)
    fi
    for deb in "$dir"/debs/*.deb; do
        local out=$dir/root/$(basename "$deb" .deb)
        [ -d "$out" ] || { mkdir -p "$out" && dpkg-deb -x "$deb" "$out"; }
    done
}
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
fi
fetch "$work/arm64" -- "${arm64_pkgs[@]}"
other=$work/apt-other
mkdir -p "$other/lists/partial" "$other/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$other/sources.list" <<SOURCES
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
deb [signed-by=$keyring] http://deb.debian.org/debian-security trixie-security main
deb [signed-by=$keyring] http://deb.debian.org/debian sid main
deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main
deb [signed-by=$keyring] http://deb.debian.org/debian-security bullseye-security main
SOURCES
apt_other=(-o "Dir::Etc::sourcelist=$other/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$other/lists" -o "Dir::Cache=$other/cache")
[ -n "$(ls "$other/lists" | grep -v partial || true)" ] || apt-get "${apt_other[@]}" update -qq
fetch "$work/other" "${apt_other[@]}" -- chromium:amd64/trixie-security chromium:amd64/sid \
    chromium:amd64/bullseye-security

# label|directory
sources=()
for t in "$CORPUS_DIR"/trees/*/; do
    for side in A B; do
        [ -d "$t$side" ] && sources+=("corpus trees/$(basename "$t")/$side|$t$side")
    done
done
sources+=("this machine: /usr/lib/chromium|/usr/lib/chromium"
    "this machine: /usr/lib|/usr/lib"
    "this machine: /usr/bin|/usr/bin"
    "Debian 12 arm64: ${arm64_pkgs[*]%%:*}|$work/arm64/root"
    "Debian 13, unstable, 11 amd64: chromium|$work/other/root")

# Every regular file starting with \x7fELF (no symlinks followed), with its class, byte
# order and machine as the header states them.
elf_files() {
    find "$1" -type f -print0 | python3 -c '
import struct, sys
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p:
        continue
    try:
        with open(p, "rb") as f:
            h = f.read(20)
    except OSError:
        continue
    if len(h) < 20 or h[:4] != b"\x7fELF":
        continue
    machine = struct.unpack("<H" if h[5] == 1 else ">H", h[18:20])[0]
    ours = h[4] == 2 and h[5] == 1 and machine in (62, 183)
    sys.stdout.buffer.write(p + b"\t" + (b"yes" if ours else b"no") + b"\n")
'
}

rows=() refusals=()
total=0 total_ok=0 total_ours=0 total_ours_refused=0
for s in "${sources[@]}"; do
    label=${s%%|*} dir=${s#*|}
    list=$(mktemp)
    elf_files "$dir" >"$list"
    n=$(wc -l <"$list")
    ours=$(grep -c $'\tyes$' "$list" || true)
    out=$(cut -f1 "$list" | tr '\n' '\0' | xargs -0 -r "$dr" inspect-elf 2>/dev/null || true)
    ok=$(grep -c ': ok: ' <<<"$out" || true)
    bad=$(grep ': refused: ' <<<"$out" || true)
    ours_refused=0
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        path=${line%%: refused: *}
        if grep -qxF "$path"$'\tyes' "$list"; then
            ours_refused=$((ours_refused + 1)) scope="x86-64/AArch64"
        else
            scope="other"
        fi
        refusals+=("| $label | \`${path#"$dir"/}\` | $scope | ${line#*: refused: } |")
    done <<<"$bad"
    rm -f "$list"
    rows+=("| $label | $n | $ok | $((n - ok)) | $ours | $ours_refused |")
    total=$((total + n)) total_ok=$((total_ok + ok))
    total_ours=$((total_ours + ours)) total_ours_refused=$((total_ours_refused + ours_refused))
done

echo "# ELF layout survey"
echo
echo "\`bench/elf-parse.sh\` on $(date -u +%Y-%m-%d), deltaroot $(git -C "$here" rev-parse --short HEAD):"
echo "\`deltaroot inspect-elf\` (the ELF method's layout parser, headers only) on every file"
echo "starting with \`\\x7fELF\`. \"x86-64/AArch64\" counts the 64-bit little-endian files for those"
echo "machines, the ones the method is for."
echo
echo "| source | ELF files | parse | refused | x86-64/AArch64 | of which refused |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo "| **all** | **$total** | **$total_ok** | **$((total - total_ok))** | **$total_ours** | **$total_ours_refused** |"
echo
echo "## Refusals"
echo
if [ ${#refusals[@]} -eq 0 ]; then
    echo "None."
else
    echo "| source | file | machine | reason |"
    echo "|---|---|---|---|"
    printf '%s\n' "${refusals[@]}"
fi

if [ "${ELF_SURVEY_PAIR:-0}" = 1 ]; then
    new=$(ls "$work"/other/root/*deb13*/usr/lib/chromium/chromium | head -1)
    echo
    echo "## Chromium of Debian 12 to Debian 13 with the ELF method"
    echo
    echo '```'
    /usr/bin/time -f '%e s, %M KiB peak' "$dr" diff --method elf --out "$work/chromium.delta" \
        /usr/lib/chromium/chromium "$new" 2>&1 | sed "s|$work/||g" || true
    echo '```'
fi
