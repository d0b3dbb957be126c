#!/usr/bin/env bash
# Runs every test: the Swift suites, then the C conformance suite against
# each device type umdev serves.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --product umdev
swift test
bash scripts/conformance.sh
