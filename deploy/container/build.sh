#!/usr/bin/env bash
# Builds the deltaroot-server container image (Containerfile beside this script) from a
# binary of this machine, without pulling anything from a container registry: the image is
# `FROM scratch` with the binary, the shared libraries `ldd` names (at the same paths),
# /etc/passwd and /etc/group with the user deltaroot (65532), the machine's CA certificates
# and /data owned by that user.
#
#   deploy/container/build.sh [--binary PATH] [--tag TAG] [--no-check]
#
# --binary  the deltaroot-server to put in (default: `cargo build --release -p
#           deltaroot-server`, its debug info split off by deploy/split-debug.sh into
#           target/release/deltaroot-server.debug, which stays on this machine). The image's
#           copy never carries debug info (objcopy --strip-debug on the copy).
# --tag     the image's name (default: deltaroot-server:latest).
# --no-check  skip running `deltaroot-server --version` in the new image.
# CONTAINER_ENGINE=docker builds with docker instead of podman.
#
# Prints the image's size, and the podman options a container of it runs with here (crun
# fails on hosts with cgroups in hybrid mode, so runc is tried next; ulimits are explicit
# because some hosts refuse the runtime's setrlimit).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
engine=${CONTAINER_ENGINE:-podman}
binary=""
tag="deltaroot-server:latest"
check=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --no-check) check=0; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (--binary PATH, --tag TAG, --no-check)" >&2; exit 2 ;;
  esac
done

command -v "$engine" >/dev/null || { echo "build.sh: $engine is not installed" >&2; exit 1; }

if [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release -p deltaroot-server)
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/deltaroot-server"
  "$repo/deploy/split-debug.sh" "$binary"
fi
[ -x "$binary" ] || { echo "build.sh: $binary is not an executable" >&2; exit 1; }

certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "build.sh: $certs is missing (Debian: apt-get install ca-certificates)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/bin" "$root/etc/ssl/certs" "$ctx/data"
mkdir -m 1777 "$root/tmp"
cp "$binary" "$root/usr/bin/deltaroot-server"
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$root/usr/bin/deltaroot-server"
fi
chmod 0755 "$root/usr/bin/deltaroot-server"

# The loader and each library at the path the binary asks for (symlinks resolved: the
# image has no /lib -> usr/lib of its own).
libs=$(ldd "$root/usr/bin/deltaroot-server" 2>&1 || true)
case "$libs" in
  *"not a dynamic executable"*|*"statically linked"*) libs="" ;;
  *"not found"*) echo "build.sh: a library of $binary is missing:" >&2; echo "$libs" >&2; exit 1 ;;
esac
for lib in $(printf '%s\n' "$libs" | grep -o '/[^ ]*' || true); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cp -L "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
deltaroot:x:65532:65532:deltaroot server:/data:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
deltaroot:x:65532:
GROUP
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod -R u=rwX,go=rX "$root/usr" "$root/etc"
[ -d "$root/lib" ] && chmod -R u=rwX,go=rX "$root/lib"
[ -d "$root/lib64" ] && chmod -R u=rwX,go=rX "$root/lib64"

format=()
[ "$engine" = podman ] && format=(--format docker)   # keeps HEALTHCHECK
"$engine" build "${format[@]}" --file "$here/Containerfile" --tag "$tag" "$ctx" >&2

size=$("$engine" image inspect --format '{{.Size}}' "$tag")
summary="image $tag: $size bytes ($(( (size + 524288) / 1048576 )) MiB)"

if [ "$check" = 1 ] && [ "$engine" = podman ]; then
  # crun first, then runc; explicit ulimits (see README.md). No health check timer for a
  # container that only prints its version.
  limits=(--ulimit nofile=20000:20000 --ulimit nproc=1000:1000)
  for runtime in "" runc; do
    global=(${runtime:+--runtime "$runtime"})
    if out=$(podman "${global[@]}" run --rm --no-healthcheck "${limits[@]}" "$tag" --version 2>"$ctx/err"); then
      echo "$summary; $out runs with: podman ${global[*]}${global[*]:+ }run ${limits[*]} …"
      exit 0
    fi
    echo "build.sh: podman ${global[*]}${global[*]:+ }run ${limits[*]} failed: $(tail -n 3 "$ctx/err")" >&2
  done
  echo "$summary"
  echo "build.sh: the image is built but no runtime here runs it" >&2
  exit 1
fi
echo "$summary"
