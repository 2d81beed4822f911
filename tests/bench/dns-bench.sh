#!/usr/bin/env bash
# Side-by-side DNS benchmark (not in CI): netloom-dnsd vs Debian's aardvark-dns 1.4, same
# machine, same run, inside a private network namespace (all traffic on its loopback).
#
#   sudo tests/bench/dns-bench.sh            # needs: cargo build --release, apt install dnsperf aardvark-dns dnsutils
#
# Both servers get the same 1000 container names on 127.0.1.1 (netloom port 53, aardvark port
# 5353) and the same upstream: netloom-dnsd's test upstream on 127.0.0.2:53 (the `test.` zone).
# dnsperf asks from a registered container address (127.0.1.2), as both servers scope answers
# by the asker's address. Measured: local names (UDP, TCP) and forwarded names (UDP; netloom
# answers these from its cache, aardvark 1.4 has none and forwards every one), unloaded p50
# latency, and netloom-dnsd's RSS with 1000 names.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
AARDVARK=${AARDVARK:-/usr/lib/podman/aardvark-dns}
SECS=${SECS:-10}
NAMES=${NAMES:-1000}
# UDP local names are measured REPS times, alternating netloom and aardvark (the machine is
# shared: a ratio within one pair is what counts).
REPS=${REPS:-3}
for t in "$BIN/netloom-dns" "$BIN/netloom-dnsd" "$AARDVARK" "$(command -v dnsperf)" "$(command -v dig)"; do
    [ -x "$t" ] || { echo "missing $t (cargo build --release; apt-get install dnsperf aardvark-dns dnsutils)" >&2; exit 1; }
done
NS=nldnsbench$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nldnsbench.XXXXXX")
UPPID=""
AAPID=""
cleanup() {
    [ -n "$AAPID" ] && kill "$AAPID" 2>/dev/null || true
    [ -f "$WORK/state/dns/server.pid" ] && kill "$(cat "$WORK/state/dns/server.pid")" 2>/dev/null || true
    [ -f "$WORK/aardvark/aardvark.pid" ] && kill "$(cat "$WORK/aardvark/aardvark.pid")" 2>/dev/null || true
    [ -n "$UPPID" ] && kill "$UPPID" 2>/dev/null || true
    sleep 0.3
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
inns() { ip netns exec "$NS" "$@"; }

# The upstream.
# `ip netns exec` execs the program, so $! is the upstream's own pid (a shell function would not be).
ip netns exec "$NS" "$BIN/netloom-dnsd" test-upstream --listen 127.0.0.2:53 > "$WORK/up.out" 2>/dev/null &
UPPID=$!
for _ in $(seq 50); do grep -q ready "$WORK/up.out" 2>/dev/null && break; sleep 0.1; done

addr() { echo "127.0.$(( (2 + $1) / 256 + 1 )).$(( (2 + $1) % 256 ))"; }

# netloom: NAMES containers registered through the plugin (the server starts on the first ADD).
mkdir -p "$WORK/state" "$WORK/aardvark"
echo "registering $NAMES names with netloom-dns..."
for i in $(seq 0 $((NAMES - 1))); do
    ip=$(addr "$i")
    conf='{"cniVersion":"1.0.0","name":"bench","type":"netloom-dns","stateDir":"'"$WORK/state"'","upstreams":["127.0.0.2"],
      "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/'"$NS"'"}],
      "ips":[{"address":"'"$ip"'/16","gateway":"127.0.1.1","interface":0}]}}'
    echo "$conf" | inns env CNI_COMMAND=ADD CNI_CONTAINERID="ctr$i" CNI_NETNS=/run/netns/"$NS" CNI_IFNAME=eth0 \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=c$i" CNI_PATH="$BIN" "$BIN/netloom-dns" >/dev/null
done

# aardvark: the same names in its network file (listen ip + upstream, then one line per container).
{
    echo "127.0.1.1 127.0.0.2"
    for i in $(seq 0 $((NAMES - 1))); do echo "ctr$i $(addr "$i")  c$i"; done
} > "$WORK/aardvark/bench"
ip netns exec "$NS" "$AARDVARK" --config "$WORK/aardvark" -p 5353 run >/dev/null 2>&1 &
AAPID=$!
for _ in $(seq 50); do inns dig +short +tries=1 +time=1 -b 127.0.1.2 @127.0.1.1 -p 5353 c1 | grep -q . && break; sleep 0.1; done

check() { # server port name → one answer
    inns dig +short +tries=1 +time=2 -b 127.0.1.2 @127.0.1.1 -p "$1" "$2" | head -1
}
echo "sanity: netloom c7 -> $(check 53 c7), aardvark c7 -> $(check 5353 c7)"
echo "sanity: netloom a.ok.test -> $(check 53 a.ok.test), aardvark a.ok.test -> $(check 5353 a.ok.test)"

for i in $(seq 0 $((NAMES - 1))); do echo "c$i A"; done > "$WORK/local.txt"
for i in $(seq 0 99); do echo "h$i.ok.test A"; done > "$WORK/fwd.txt"

QPS=0
perf() { # label port mode file → prints a line, leaves the rate in $QPS
    local out
    QPS=0
    out=$(inns dnsperf -s 127.0.1.1 -p "$2" -a 127.0.1.2 -m "$3" -d "$4" -l "$SECS" -c 8 -Q 1000000 -q 200 2>&1 || true)
    local qps
    qps=$(echo "$out" | awk '/Queries per second/ {printf "%.0f", $4}')
    if [ -z "$qps" ] || [ "$qps" = 0 ]; then
        case "$1" in aardvark*TCP*) why="aardvark-dns 1.4 serves UDP only" ;; *) why="dnsperf: $(echo "$out" | grep -m1 -i error)" ;; esac
        printf '%-36s %s\n' "$1" "no answers ($why)"
        return
    fi
    QPS=$qps
    printf '%-36s %8s qps  avg latency %s ms  %s\n' "$1" "$qps" \
        "$(echo "$out" | awk '/Average Latency/ {printf "%.2f", $4 * 1000; exit}')" \
        "$(echo "$out" | awk '/Queries lost/ {print "lost " $3 " " $4}')"
}
p50() { # port name → median latency of 2000 sequential queries (one outstanding: unloaded), µs
    echo "$2 A" > "$WORK/one.txt"
    inns dnsperf -s 127.0.1.1 -p "$1" -a 127.0.1.2 -d "$WORK/one.txt" -n 2000 -q 1 -v 2>/dev/null \
        | awk '/^> NOERROR/ {print $NF * 1e6}' \
        | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.0f µs (n=%d)", a[int(NR/2)+1], NR; else print "n/a"}'
}
# Warm both (netloom's cache, aardvark's nothing).
perf "warm-up netloom fwd" 53 udp "$WORK/fwd.txt" >/dev/null
echo
echo "== $(date -u '+%F %H:%M UTC') load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//'), ${SECS}s each, dnsperf -c 8 -q 200"
echo "netloom-dnsd serving threads: ${NETLOOM_DNSD_THREADS:-default (two per core, 2 to 4)}"
RATIOS=""
for r in $(seq "$REPS"); do
    perf "netloom  local names  UDP #$r" 53 udp "$WORK/local.txt"
    ours=$QPS
    perf "aardvark local names  UDP #$r" 5353 udp "$WORK/local.txt"
    if [ "$QPS" != 0 ]; then
        ratio=$(awk -v a="$ours" -v b="$QPS" 'BEGIN {printf "%.2f", a / b}')
        RATIOS="$RATIOS $ratio"
        echo "   ratio #$r: ${ratio}x   (load $(cut -d' ' -f1-3 /proc/loadavg))"
    fi
done
echo "local names UDP, netloom/aardvark:$RATIOS   median $(echo "$RATIOS" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)] "x"}')"
perf "netloom  local names  TCP" 53 tcp "$WORK/local.txt"
perf "aardvark local names  TCP" 5353 tcp "$WORK/local.txt"
perf "netloom  forwarded    UDP (cached)" 53 udp "$WORK/fwd.txt"
perf "aardvark forwarded    UDP (no cache)" 5353 udp "$WORK/fwd.txt"
echo "unloaded p50, local name: netloom $(p50 53 c7)   aardvark $(p50 5353 c7)"
pid=$(cat "$WORK/state/dns/server.pid")
echo "RSS with $NAMES names: netloom-dnsd $(awk '/VmRSS/ {print $2, $3}' /proc/"$pid"/status)," \
     "aardvark-dns $(awk '/VmRSS/ {print $2, $3}' /proc/"$(cat "$WORK/aardvark/aardvark.pid" 2>/dev/null || pgrep -n -f "$WORK/aardvark")"/status 2>/dev/null || echo n/a)"
