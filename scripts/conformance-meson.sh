#!/usr/bin/env bash
# Builds vfio-user-conformance with meson alone (a C compiler, cmocka,
# json-c: what a C project's CI has), checks that it lists exactly the checks
# the SwiftPM build lists, and runs it against every umdev type.
set -euo pipefail
cd "$(dirname "$0")/.."

build=.build-meson
if [ -f "$build/build.ninja" ]; then meson setup --reconfigure "$build" Tests/Conformance >/dev/null
else meson setup "$build" Tests/Conformance >/dev/null; fi
meson compile -C "$build" >/dev/null
swift build --product vfio-user-conformance
swiftpm=$(swift build --show-bin-path)/vfio-user-conformance
if ! diff <("$swiftpm" --list) <("$build/vfio-user-conformance" --list) >/dev/null; then
    echo "the meson build and the SwiftPM build of the suite list different checks:" >&2
    diff <("$swiftpm" --list) <("$build/vfio-user-conformance" --list) >&2 || true
    exit 1
fi
echo "== meson-built suite: $("$build/vfio-user-conformance" --list | grep -E '^[0-9]+ checks' )"
CONFORMANCE="$PWD/$build/vfio-user-conformance" bash scripts/conformance.sh
