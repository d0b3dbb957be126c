#!/usr/bin/env bash
# Builds the C conformance suite and runs it against `umdev serve` for each
# device type, each with its device profile. CONFORMANCE=PATH runs that build
# of the suite instead (scripts/test.sh passes the meson-built one).
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --product umdev
bin=$(swift build --show-bin-path)
if [ -n "${CONFORMANCE:-}" ]; then
    suite=$CONFORMANCE
else
    swift build --product vfio-user-conformance
    suite=$bin/vfio-user-conformance
fi
status=0
for type in $("$bin/umdev" types --names); do
    sock=$(mktemp -u /tmp/umdev-conformance-XXXXXX.sock)
    "$bin/umdev" serve --type "$type" --socket "$sock" --log-level error &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    profile=Tests/Conformance/profiles/$type.json
    args=(--socket "$sock")
    [ -f "$profile" ] && args+=(--profile "$profile")
    # Display types (their profile says region or dmabuf) have a display socket beside the device socket.
    if [ -f "$profile" ] && grep -Eq '"display": "(region|dmabuf)"' "$profile"; then
        for _ in $(seq 100); do [ -S "$sock.display" ] && break; sleep 0.05; done
        args+=(--display-socket "$sock.display")
    fi
    echo "== vfio-user-conformance: $type"
    junit=()
    [ -n "${CONFORMANCE_JUNIT_DIR:-}" ] && junit=(--junit "$CONFORMANCE_JUNIT_DIR/$type.xml")
    "$suite" "${args[@]}" "${junit[@]}" --quiet || status=1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
exit $status
