#!/usr/bin/env bash
# The real-kernel test lane: runs the integration tests that need kernel features this
# machine's kernel lacks (ipvlan, 802.1Q VLANs, dummy links) inside Debian's own kernel under
# QEMU, in ONE boot, and prints their libtest output (ok / FAILED / ignored per test) as the
# rest of the suite does. Exit status: the tests' (124: time limit, 125: the guest died).
#
#   tests/kernel/lane.sh [FILTER]      default FILTER: kernel:: (the vlan and cni suites' kernel tests)
#
# Needs root and the packages `run-in-kernel.sh --install-deps` installs (./test.sh does that).
# The kernel comes from RUN_IN_KERNEL_ROOT (default /var/tmp/kroot: an unpacked
# linux-image-*-amd64 .deb, nothing installed in /boot). The debug build is shared read-only
# into the guest over 9p at the same path, so the test binary finds the plugins beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
filter=${1:-kernel::}
export RUN_IN_KERNEL_ROOT=${RUN_IN_KERNEL_ROOT:-/var/tmp/kroot}
export CARGO_TERM_COLOR=never

# The binaries the tests run: the vlan integration test and the CNI plugins it execs, built
# with the features ./test.sh's `cargo test` uses, so after it this rebuilds nothing.
features=(--features "${NETLOOM_LANE_FEATURES:-engine-core/root-tests}")
cargo build -q -p cni-plugins --bins "${features[@]}"
# The suites with kernel:: tests: vlan (macvlan/ipvlan/802.1Q) and cni (bridge VLAN filtering).
testbins=()
for suite in vlan cni; do
  bin=$(cargo test -q -p tests --test "$suite" --no-run --message-format=json "${features[@]}" 2>/dev/null \
    | grep -o "\"executable\":\"[^\"]*/$suite-[^\"]*\"" | cut -d'"' -f4 | tail -n 1)
  [[ -x $bin ]] || { echo "lane: cannot find the $suite test binary" >&2; exit 1; }
  testbins+=("$bin")
done
testbin=${testbins[0]}
target=$(cd "$(dirname "$testbin")/../.." && pwd)

job=$(mktemp "${TMPDIR:-/tmp}/netloom-lane.XXXXXX")
trap 'rm -f "$job"' EXIT
cat >"$job" <<JOB
#!/bin/sh
echo "lane: kernel \$(uname -r), \$(nproc) cpu"
cd /tmp
# Two test threads: the guest has two CPUs, and most of each test is waiting on the kernel.
# Every suite runs; the lane fails if any did.
rc=0
for t in ${testbins[*]}; do
  "\$t" '$filter' --test-threads=2 || rc=\$?
done
exit \$rc
JOB

# libgcc_s is the one library of a Rust binary that the base image lacks. Not `exec`: the
# EXIT trap must still run to remove the job file.
"$here/run-in-kernel.sh" -c 2 -M 1536M -t "${NETLOOM_LANE_TIMEOUT:-420}" \
  -s "$target:$target" -f /lib/x86_64-linux-gnu/libgcc_s.so.1 \
  -e NETLOOM_KERNEL_LANE=1 -e NETLOOM_TEST_STRICT=1 -e RUST_BACKTRACE=1 \
  "$job"
