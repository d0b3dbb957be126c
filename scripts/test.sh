#!/usr/bin/env bash
# Runs every test: the Swift suites, the C conformance suite (built by SwiftPM
# and by meson alone) against each device type umdev serves and against
# deliberately broken servers, then the viewers end to end with real clients
# (a VNC client, headless Chromium), then each fuzz target for a minute
# (UMDEV_FUZZ_SECONDS to change it). What it needs beyond the Swift toolchain
# is installed first (scripts/deps.sh), or named when it cannot be.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
swift build --product umdev
swift build --product umdev-bench
swift test
bash scripts/conformance.sh
# The suite as a C project builds it, without Swift: the same checks, the same results.
bash scripts/conformance-meson.sh
CONFORMANCE="$(swift build --show-bin-path)/vfio-user-conformance" python3 -m pytest -q Tests/Conformance/selftest
UMDEV="$(swift build --show-bin-path)/umdev" UMDEV_BENCH="$(swift build --show-bin-path)/umdev-bench" python3 -m pytest -q Tests/e2e
# Each libFuzzer target for a bounded time from the committed seeds; a crash fails the run.
bash scripts/fuzz.sh all "${UMDEV_FUZZ_SECONDS:-60}"
