#!/usr/bin/env bash
# The performance figures quoted in release notes, measured on this machine.
#   1. umdev-bench: ops/s, p50/p99, heap allocations per op (in-process server),
#      on the test device's scratch register and on mtty-2's.
#   2. strace -c on a separate server: syscalls per 1-byte REGION_READ (also
#      with state kept for a crash, --fd-store under scripts/fd-store-sink.py).
#   3. callgrind on a separate server: user-space instructions per request,
#      as the difference between a long and a short run, beside the floor
#      (Benchmarks/floor/floor-server.c); with state kept, reads and writes.
#   4. mtty: loopback throughput, interrupt latency against a write round trip.
#   5. Opt-in polling beside libvfio-user's gpio sample, when GPIO=/path/to/
#      gpio-pci-idio-16 names a build of it (build it from its public sources).
#   6. Display: 1080p snapshots and PNG encode time and size; live viewers'
#      frame rates and idle CPU; the daemon's RSS, threads, start times and
#      idle CPU up to 1,000 instances.
# Run it on an otherwise idle machine: 3 and the allocation counts do not
# depend on load; the timings do.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product umdev >/dev/null
swift build -c release --product umdev-bench >/dev/null
bin=.build/release/umdev
bench=.build/release/umdev-bench
sock=/tmp/umdev-measure-$$.sock
# Each device with the register its 1-byte REGION_READ reads.
devices=("test|0|0x10" "mtty-2|0|7")

echo "== umdev-bench (release, in-process server)"
for d in "${devices[@]}"; do
    IFS='|' read -r type region offset <<< "$d"
    echo "-- $type, region $region offset $offset"
    $bench --iterations 100000 --type "$type" --region "$region" --offset "$offset" --widths 1
done

sink=/tmp/umdev-measure-$$.notify
serve_under() { # $1 = type; the rest = wrapper command; starts the server, waits for its socket
    # keep=1: under an fd store (scripts/fd-store-sink.py), --fd-store: every
    # change saved for a crash before its reply.
    local type=$1; shift
    rm -f "$sock"   # a server stopped with --fd-store leaves its socket file for the next start
    local extra=() notify=""
    if [ -n "${keep:-}" ]; then extra=(--fd-store); notify=$sink; fi
    # Its stdout (the -device line it prints) would land among the figures.
    NOTIFY_SOCKET=$notify "$@" ${served:-$bin} serve --type "$type" --socket "$sock" "${extra[@]}" --log-level error >/dev/null 2>>/tmp/umdev-measure-server.log &
    pid=$!
    for _ in $(seq 600); do [ -S "$sock" ] && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}

stop_server() { # SIGTERM the server itself (background jobs ignore SIGINT); the wrapper then exits
    pkill -TERM -f "serve --type .* --socket $sock" || true
    wait $pid 2>/dev/null || true
}

python3 scripts/fd-store-sink.py "$sink" & sinkpid=$!
trap 'kill $sinkpid 2>/dev/null || true; rm -f "$sink"' EXIT

echo "== syscalls per 1-byte REGION_READ (strace -c -f, 20000 requests)"
for d in "${devices[@]}" "mtty-2|0|7|keep"; do
    IFS='|' read -r type region offset kept <<< "$d"
    keep=$kept serve_under "$type" strace -f -c -o /tmp/umdev-strace.$$
    $bench --socket "$sock" --only read-1 --iterations 20000 --region "$region" --offset "$offset" --widths 1 >/dev/null
    stop_server
    echo "-- $type${kept:+, state kept for a crash (--fd-store)} (21000 requests incl. warm-up)"
    grep -E "calls|recvmsg|sendmsg|poll|write|total" /tmp/umdev-strace.$$ || true
    rm -f /tmp/umdev-strace.$$
done

echo "== instructions per 1-byte REGION_READ (callgrind, server only)"
# valgrind 3.19 cannot read the DWARF 5 Swift emits: measure a copy without debug info.
strip --strip-debug -o /tmp/umdev-nodebug.$$ $bin
count() { # $1 = type, $2 = requests, $3 = region, $4 = offset, $5 = case (read-1); prints the server's total instructions
    served=/tmp/umdev-nodebug.$$ serve_under "$1" valgrind --tool=callgrind --callgrind-out-file=/tmp/umdev-cg.$$ -q
    $bench --socket "$sock" --only "${5:-read-1}" --iterations "$2" --region "$3" --offset "$4" --widths 1 >/dev/null
    stop_server
    sleep 0.5
    callgrind_annotate /tmp/umdev-cg.$$ 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'
    rm -f /tmp/umdev-cg.$$
}
for d in "${devices[@]}"; do
    IFS='|' read -r type region offset <<< "$d"
    short=$(count "$type" 2000 "$region" "$offset"); long=$(count "$type" 22000 "$region" "$offset")
    echo "$type: $(( (long - short) / 20000 )) instructions per request ($short Ir for 3000 requests, $long Ir for 23000, warm-up included)"
done
for d in "${devices[@]}"; do
    IFS='|' read -r type region offset <<< "$d"
    short=$(count "$type" 2000 "$region" "$offset" write-1); long=$(count "$type" 22000 "$region" "$offset" write-1)
    echo "$type write-1: $(( (long - short) / 20000 )) instructions per request"
done
# The floor: a minimal C server (one recv, a switch, one send) answering the same read.
cc -O2 -o /tmp/umdev-floor.$$ Benchmarks/floor/floor-server.c
count_floor() { # $1 = requests; the floor server's total instructions
    rm -f "$sock"
    valgrind --tool=callgrind --callgrind-out-file=/tmp/umdev-cg.$$ -q /tmp/umdev-floor.$$ "$sock" 2>/dev/null &
    local p=$!
    for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.1; done
    $bench --socket "$sock" --only read-1 --iterations "$1" --region 0 --offset 7 --widths 1 >/dev/null
    kill -TERM $p; wait $p 2>/dev/null || true
    sleep 0.5
    callgrind_annotate /tmp/umdev-cg.$$ 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'
    rm -f /tmp/umdev-cg.$$
}
short=$(count_floor 2000); long=$(count_floor 22000)
echo "floor (Benchmarks/floor/floor-server.c): $(( (long - short) / 20000 )) instructions per request"
rm -f /tmp/umdev-floor.$$
# The same with every change kept for a crash (--fd-store under a store):
# a read that changes nothing saves nothing; a write saves the device's state.
for c in "read-1|mtty-2|0|7" "write-1|mtty-2|0|7" "write-1|test|0|0x10"; do
    IFS='|' read -r what type region offset <<< "$c"
    short=$(keep=1 count "$type" 2000 "$region" "$offset" "$what"); long=$(keep=1 count "$type" 22000 "$region" "$offset" "$what")
    echo "$type $what, state kept for a crash: $(( (long - short) / 20000 )) instructions per request"
done
rm -f /tmp/umdev-nodebug.$$

echo "== start-up of umdev serve --type mtty-2: exec to READY=1 (its socket listening), and instructions to get there"
# The release as scripts/install.sh builds it (the Swift runtime and Foundation inside) beside the one linking them.
swift build -c release --static-swift-stdlib --build-path .build-static --product umdev >/dev/null
startup_instructions() { # $1 = binary; the instructions until the socket listens (callgrind, then SIGINT)
    strip --strip-debug -o /tmp/umdev-start.$$ "$1"
    rm -f "$sock"
    valgrind --tool=callgrind --callgrind-out-file=/tmp/umdev-cg-start.$$ -q /tmp/umdev-start.$$ serve --type mtty-2 --socket "$sock" \
        --log-level error >/dev/null 2>&1 &
    local p=$!
    for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.1; done
    kill -INT $p; wait $p 2>/dev/null || true
    callgrind_annotate /tmp/umdev-cg-start.$$ 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'
    rm -f /tmp/umdev-cg-start.$$ /tmp/umdev-start.$$
}
for b in .build-static/release/umdev "$bin"; do
    python3 scripts/startup.py "$b" 40
    echo "  $(startup_instructions "$b") instructions from exec to listening"
done

echo "== mtty: loopback and interrupt latency"
$bench --mtty --iterations 20000

echo "== opt-in polling"
if [ -n "${GPIO:-}" ]; then
    $bench --polling --gpio "$GPIO" --iterations 100000
else
    $bench --polling --iterations 100000
    echo "(set GPIO=/path/to/gpio-pci-idio-16 to measure libvfio-user's sample beside it)"
fi

echo "== display: plane queries, 1080p snapshots and PNG encode (time and size), server RSS"
$bench --display

echo "== live viewers: VNC and web frame rates, idle CPU per 1080p screen (adaptive and every 30 ms)"
$bench --viewers

echo "== lifecycle daemon: RSS, threads, start p50/p99 and idle CPU, up to 1,000 mtty-1 instances"
$bench --daemon
