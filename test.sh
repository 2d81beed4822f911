#!/usr/bin/env bash
# Runs netloom's whole test suite on a fresh Debian 12 machine, as root: installs what the tests
# need with apt-get, then formatting, lints, unit tests, root tests and integration tests.
# Missing capabilities fail the run (NETLOOM_TEST_STRICT=1) instead of being skipped.
#
#   ./test.sh                 everything
#   ./test.sh -- FILTER       only tests whose name contains FILTER (cargo test's filter)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s ==\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root (the tests create network namespaces, links and firewall rules)" >&2
    exit 1
fi

# Debian packages the tests use. iproute2/nftables/iptables are independent tools the tests
# check the product against (the product itself never execs them).
PKGS=(iproute2 nftables iptables procps kmod ca-certificates pkg-config libnftnl-dev libmnl-dev iputils-ping containernetworking-plugins graphviz)
# The real-kernel lane (tests/kernel/): QEMU, and what run-in-kernel.sh builds its initramfs from.
PKGS+=(qemu-system-x86 busybox-static cpio zstd xz-utils)
# The Docker tests (tests/tests/docker.rs) start a private dockerd next to netloomd, with a
# busybox image they build offline: Debian's dockerd and static busybox are all they need.
PKGS+=(docker.io busybox-static)
# The etcd store and overlay tests (tests/tests/etcd.rs, overlay) start private etcd members.
PKGS+=(etcd-server)
# The DNS tests (tests/tests/dns.rs) query netloom-dnsd with a real client: dig.
PKGS+=(dnsutils)
# A real CNI client: podman 4.3 with its CNI backend runs our conflists (tests/tests/podman.rs).
PKGS+=(podman)
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

# The kernel the lane boots: Debian's linux-image, unpacked under /var/tmp/kroot (nothing is
# installed in /boot). Fetched once; run-in-kernel.sh --install-deps knows how.
export RUN_IN_KERNEL_ROOT=${RUN_IN_KERNEL_ROOT:-/var/tmp/kroot}
if ! ls "$RUN_IN_KERNEL_ROOT"/boot/vmlinuz-6.* >/dev/null 2>&1; then
    log "fetch the kernel for the kernel lane into $RUN_IN_KERNEL_ROOT"
    mkdir -p "$RUN_IN_KERNEL_ROOT"
    tests/kernel/run-in-kernel.sh --install-deps
fi

if ! command -v cargo >/dev/null; then
    # Debian 12's own cargo is older than the crates need: the machine image provides a
    # rustup toolchain; say so plainly if it is missing.
    echo "test.sh: cargo not found; install a Rust toolchain >= 1.85 (rustup) first" >&2
    exit 1
fi

export NETLOOM_TEST_STRICT=1
export CARGO_TERM_COLOR=never
filter=()
if [ "${1:-}" = "--" ]; then shift; filter=("$@"); fi

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy"
cargo clippy --workspace --all-targets --features engine-core/root-tests -- -D warnings

# The integration tests run the product's binaries (CNI plugins, netloomd, netlab) as a runtime
# would: build them first so no test runs a stale one.
log "cargo build --workspace"
cargo build --workspace --all-targets

log "cargo test (unit, root and integration tests)"
# Every runner's "test result:" line goes to one log, summed up at the end into one closing line.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
set +e
# --no-fail-fast: one failing crate must not hide the results of the others.
cargo test --no-fail-fast --workspace --lib --bins --tests --features engine-core/root-tests -- "${filter[@]}" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e

# ipvlan, 802.1Q VLANs and dummy links are not in this machine's kernel: those tests run in
# Debian's kernel under QEMU, one boot for the whole set (tests/kernel/lane.sh). With a filter,
# the lane runs only when the filter selects some of its tests.
lane_filter="kernel::"
if [ "${#filter[@]}" -gt 0 ]; then
    case "vlan::kernel::" in
        *"${filter[0]}"*) ;;
        *) case "${filter[0]}" in vlan::kernel::*|cni::kernel::*) lane_filter="${filter[0]}" ;; *) lane_filter="" ;; esac ;;
    esac
fi
if [ -n "$lane_filter" ]; then
    log "kernel lane: vlan tests in Debian's kernel under QEMU"
    set +e
    tests/kernel/lane.sh "$lane_filter" 2>&1 | tee -a "$results"
    lane=${PIPESTATUS[0]}
    set -e
    [ "$lane" = 0 ] || status=$lane
fi

read -r passed failed ignored < <(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i
        }
    } END { print p+0, f+0, g+0 }' "$results")
echo
echo "netloom: $passed passed, $failed failed, $ignored skipped"
exit "$status"
