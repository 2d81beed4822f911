#!/usr/bin/env bash
# Builds and installs netloom on a fresh Debian 12 machine, as root:
#   CNI plugins  -> /opt/cni/bin
#   other tools  -> /usr/local/bin
#   state        -> /var/lib/netloom (NETLOOM_STATE_DIR overrides)
# Once netloomd exists, this script also installs its systemd unit and starts it.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s ==\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs into /opt/cni/bin and /usr/local/bin)" >&2
    exit 1
fi

PKGS=(iproute2 nftables iptables ca-certificates pkg-config libnftnl-dev libmnl-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found; install Rust >= 1.85 (rustup)" >&2; exit 1; }

log "cargo build --release"
cargo build --release --workspace

log "install"
install -d -m 0755 /opt/cni/bin /usr/local/bin
install -d -m 0700 "${NETLOOM_STATE_DIR:-/var/lib/netloom}"
shopt -s nullglob
for bin in target/release/netloom-*; do
    [ -x "$bin" ] && [ -f "$bin" ] || continue
    # netloom-dnsd is a server, not a CNI plugin: it goes to /usr/local/bin below.
    [ "$(basename "$bin")" = netloom-dnsd ] && continue
    install -m 0755 "$bin" /opt/cni/bin/
    echo "  /opt/cni/bin/$(basename "$bin")"
done
for bin in target/release/netlab target/release/netloomd target/release/netloom-dnsd; do
    [ -x "$bin" ] || continue
    install -m 0755 "$bin" /usr/local/bin/
    echo "  /usr/local/bin/$(basename "$bin")"
done

if [ -x /usr/local/bin/netloomd ] && [ -f daemon/netloomd.service ]; then
    log "start netloomd"
    install -m 0644 daemon/netloomd.service /etc/systemd/system/netloomd.service
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now netloomd
    else
        # No systemd (containers, CI): run it in the background with its log in /var/log.
        pkill -x netloomd || true
        nohup /usr/local/bin/netloomd >/var/log/netloomd.log 2>&1 &
    fi
fi
if [ -x /usr/local/bin/netloomd ] && command -v dockerd >/dev/null; then
    # Docker looks plugins up by socket name on first use: no dockerd restart is needed.
    echo "  Docker: docker network create -d netloom-bridge --ipam-driver netloom-ipam NAME"
fi
echo "netloom installed."
