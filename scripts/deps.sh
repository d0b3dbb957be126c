#!/usr/bin/env bash
# What the tests need beyond the Swift toolchain, on Debian 12: installed when
# this runs as root (or with sudo that needs no password), otherwise named
# with the exact commands to run, and the exit status is 1.
#   C libraries the build and the C suite link, meson for the suite's
#   Swift-free build, Chromium for the web viewer's tests, systemd's tools
#   for checking the units, and the Python packages of the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libcmocka-dev libjson-c-dev libpng-dev libvncserver-dev pkg-config meson ninja-build chromium systemd)
need=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        as_root=()
    elif sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "The tests need these Debian packages; install them with:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
        exit 1
    fi
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python packages for the end-to-end tests: a real VNC client, a DevTools
# client, a PNG decoder, a JSON Schema validator.
missing=$(python3 - <<'PY'
import importlib.util
mods = {"pytest": "pytest", "vncdotool": "vncdotool", "websocket": "websocket-client", "png": "pypng", "jsonschema": "jsonschema"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    echo "installing Python packages: $missing" >&2
    if ! python3 -m pip install -q --disable-pip-version-check -r Tests/e2e/requirements.txt; then
        echo "The end-to-end tests need: python3 -m pip install -r Tests/e2e/requirements.txt" >&2
        exit 1
    fi
fi
