#!/usr/bin/env bash
# Builds netloomd as a Docker managed (v2) plugin: a rootfs holding the binary and the shared
# libraries it links (libnftnl, libmnl, libc), plus config.json, handed to `docker plugin create`.
# No registry is involved; push the result yourself if you want to distribute it.
#
#   daemon/plugin/build.sh [NAME]        default NAME: netloom/netloom:latest
#
# Environment: NETLOOMD_BIN=path uses that binary instead of building a release one;
# DOCKER="docker -H unix:///…" talks to another dockerd; ENABLE=0 creates without enabling.
#
# Then: docker network create -d NAME --ipam-driver NAME --subnet 10.1.0.0/24 mynet
# (a managed plugin has one name and one socket for both of its drivers).
set -euo pipefail
cd "$(dirname "$0")/../.."

name=${1:-netloom/netloom:latest}
docker_cmd=${DOCKER:-docker}
bin=${NETLOOMD_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release -p daemon
    bin=target/release/netloomd
fi
[ -x "$bin" ] || { echo "build.sh: $bin is not an executable" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/run/docker/plugins" "$rootfs/var/lib/netloom" \
    "$rootfs/var/run/docker/netns" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/etc"
install -m 0755 "$bin" "$rootfs/bin/netloomd"
# The dynamic loader and every library the binary needs, at the same paths as on this host.
ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
cp daemon/plugin/config.json "$work/config.json"

$docker_cmd plugin rm -f "$name" >/dev/null 2>&1 || true
$docker_cmd plugin create "$name" "$work"
if [ "${ENABLE:-1}" = 1 ]; then
    $docker_cmd plugin enable "$name"
fi
echo "plugin $name ready: docker network create -d $name --ipam-driver $name …"
