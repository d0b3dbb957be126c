#!/usr/bin/env bash
# The Swift test suites under AddressSanitizer and ThreadSanitizer, each in
# a build directory of its own (.build-asan, .build-tsan; both ignored by git),
# the run's log inside it (sanitize.log).
#   scripts/sanitize.sh [address|thread ...]     default: both
# Exits non-zero when a suite fails or a sanitizer reports anything.
# Too slow for CI's time budget (each is a full instrumented rebuild); run it
# before a release and quote its last lines.
set -uo pipefail
cd "$(dirname "$0")/.."
kinds=("$@")
[ ${#kinds[@]} -eq 0 ] && kinds=(address thread)
status=0
for kind in "${kinds[@]}"; do
    case "$kind" in
        address) dir=.build-asan ;;
        thread) dir=.build-tsan ;;
        *) echo "sanitize.sh: address or thread, not $kind" >&2; exit 2 ;;
    esac
    mkdir -p "$dir"
    log=$dir/sanitize.log
    echo "== swift test --sanitize=$kind (log: $log)"
    start=$(date +%s)
    # halt_on_error=0 lets TSan report every race of the run, not only the first.
    TSAN_OPTIONS="halt_on_error=0 ${TSAN_OPTIONS:-}" ASAN_OPTIONS="detect_leaks=0 ${ASAN_OPTIONS:-}" \
        swift test --sanitize="$kind" --build-path "$dir" >"$log" 2>&1
    rc=$?
    reports=$(grep -c -E "WARNING: ThreadSanitizer|ERROR: AddressSanitizer" "$log")
    summary=$(grep -E "Test run with .* (passed|failed)" "$log" | tail -1)
    echo "   ${summary:-no summary (see the log)}; $reports sanitizer reports; exit $rc; $(( $(date +%s) - start )) s"
    [ $rc -ne 0 ] || [ "$reports" -ne 0 ] && status=1
done
exit $status
