#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (swiftc -sanitize=fuzzer).
#   scripts/fuzz.sh TARGET [SECONDS] [libFuzzer options...]
# TARGET: codec | endpoint | devices | handover | all      SECONDS: per target, default 60
#   codec     any bytes as one message: Request.decode and the VERSION JSON parsers
#   endpoint  message sequences with descriptors, over a socketpair, to an endpoint
#             serving the test device, mtty-2, mdpy-vga or mbochs-small
#   devices   random register accesses to every device model, invariants checked
#   handover  any bytes as a handover from another process (Protocol/HANDOVER.md)
# Seeds: Fuzz/corpus/TARGET (from the recorded QEMU sessions, Fuzz/seeds.py);
# what the fuzzer learns goes to .build-fuzz/corpus/TARGET, crashes to
# .build-fuzz/crashes/. Exit status non-zero when a target crashed.
# Example campaign: scripts/fuzz.sh endpoint 0 -runs=10000000
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh codec|endpoint|devices|handover|all [SECONDS] [libFuzzer options...]}
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
case "$target" in
    all) targets=(codec endpoint devices handover) ;;
    codec|endpoint|devices|handover) targets=("$target") ;;
    *) echo "fuzz.sh: unknown target $target (codec, endpoint, devices, handover or all)" >&2; exit 2 ;;
esac
status=0
for t in "${targets[@]}"; do
    UMDEV_FUZZ=1 swift build -c release --build-path .build-fuzz --product "fuzz-$t" \
        -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library >/dev/null
    work=.build-fuzz/corpus/$t
    mkdir -p "$work" .build-fuzz/crashes
    limit=()
    [ "$seconds" != 0 ] && limit=(-max_total_time="$seconds")
    echo "== fuzz-$t ${seconds}s"
    # The first corpus directory receives new inputs; the committed seeds are only read.
    if .build-fuzz/release/fuzz-"$t" "$work" "Fuzz/corpus/$t" "${limit[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
           -artifact_prefix=.build-fuzz/crashes/"$t"- -print_final_stats=1 "$@" >.build-fuzz/"$t".log 2>&1; then
        grep -E "^#[0-9]+.*(DONE|pulse)" .build-fuzz/"$t".log | tail -1
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb" .build-fuzz/"$t".log | tr '\n' ' '; echo
    else
        status=1
        echo "fuzz-$t FAILED; the end of its log (.build-fuzz/$t.log):"
        tail -30 .build-fuzz/"$t".log
    fi
done
exit $status
