#!/usr/bin/env bash
# The performance figures quoted in release notes, measured on this machine.
#   1. umdev bench: ops/s, p50/p99, allocations per op (in-process server).
#   2. strace -c on a separate server: syscalls per REGION_READ.
#   3. callgrind on a separate server: user-space instructions per request,
#      as the difference between a long and a short run.
#   4. mtty loopback throughput and interrupt latency.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product umdev >/dev/null
bin=.build/release/umdev
sock=/tmp/umdev-measure-$$.sock

echo "== umdev bench (release)"
$bin bench --iterations 100000

serve_under() { # $1.. = wrapper command; starts the server, waits for its socket
    "$@" ${served:-$bin} serve --type test --socket "$sock" --log-level error 2>>/tmp/umdev-measure-server.log &
    pid=$!
    for _ in $(seq 600); do [ -S "$sock" ] && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}

stop_server() { # SIGTERM the server itself (background jobs ignore SIGINT); the wrapper then exits
    pkill -TERM -f "serve --type test --socket $sock" || true
    wait $pid 2>/dev/null || true
}

echo "== syscalls per 1-byte REGION_READ (strace -c -f, 20000 requests)"
serve_under strace -f -c -o /tmp/umdev-strace.$$ 
$bin bench --socket "$sock" --only read-1 --iterations 20000 >/dev/null
stop_server
grep -E "calls|recvmsg|sendmsg|poll|total" /tmp/umdev-strace.$$ || true
rm -f /tmp/umdev-strace.$$

echo "== instructions per 1-byte REGION_READ (callgrind, server only)"
# valgrind 3.19 cannot read the DWARF 5 Swift emits: measure a copy without debug info.
strip --strip-debug -o /tmp/umdev-nodebug.$$ $bin
count() { # $1 = requests; prints the server's total instructions
    serve_under valgrind --tool=callgrind --callgrind-out-file=/tmp/umdev-cg.$$ -q
    $bin bench --socket "$sock" --only read-1 --iterations "$1" >/dev/null
    stop_server
    sleep 0.5
    callgrind_annotate /tmp/umdev-cg.$$ 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'
    rm -f /tmp/umdev-cg.$$
}
served=/tmp/umdev-nodebug.$$
short=$(count 2000); long=$(count 22000)
unset served
rm -f /tmp/umdev-nodebug.$$
echo "short run (3000 requests incl. warm-up): $short Ir"
echo "long run (23000 requests incl. warm-up): $long Ir"
echo "per request: $(( (long - short) / 20000 )) instructions"

echo "== mtty"
$bin bench --mtty --iterations 20000
